"""Ctrl-C and SIGTERM as exceptions, for every stage that writes outputs (train, track).

Its own module so that a stage imports no more of the package than it runs (dvc.yaml's deps
are each stage's import closure).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so cleanup runs as it does for Ctrl-C."""


_SWALLOWED: list[BaseException] = []


def raise_if_interrupted() -> None:
    """Raise the Ctrl-C or SIGTERM that Python swallowed: raised inside a ``__del__`` or weakref
    callback (SQLAlchemy's, at garbage collection), it is only reported as unraisable."""
    if _SWALLOWED:
        raise _SWALLOWED.pop()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` (and Ctrl-C ``KeyboardInterrupt``, as always); an
    interruption swallowed as unraisable is kept, silently, and raised at the next
    ``raise_if_interrupted`` (each run logged, before outputs are written) or at the end of the
    block. Once interrupted, other errors in destructors are dropped: an interruption inside
    SQLAlchemy leaves objects half-changed whose weakref callbacks then fail on assertions, and
    their tracebacks would bury the one line that says what happened."""
    interrupted = []

    def handler(signum, frame):
        interrupted.append(signum)
        raise Terminated(f"signal {signum}") if signum == signal.SIGTERM else KeyboardInterrupt

    def unraisable(u) -> None:
        if isinstance(u.exc_value, KeyboardInterrupt):
            _SWALLOWED.append(u.exc_value)
        elif not interrupted:
            hook(u)

    _SWALLOWED.clear()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield
        raise_if_interrupted()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sys.unraisablehook = hook
