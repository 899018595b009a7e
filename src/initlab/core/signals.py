"""Ctrl-C and SIGTERM as exceptions, for every stage that writes outputs (train, track).

Its own module so that a stage imports no more of the package than it runs (dvc.yaml's deps
are each stage's import closure).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so cleanup runs as it does for Ctrl-C."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` and Ctrl-C ``KeyboardInterrupt``."""

    def handler(signum, frame):
        raise Terminated(f"signal {signum}") if signum == signal.SIGTERM else KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
