"""The MLflow store shared by pipelines that run at once, and store writes no signal cuts in half.

Two pipelines may use one store at the same time: two ``initlab track`` in one project,
``dvc repro`` beside a manual ``initlab track``, or two checkouts whose ``MLFLOW_TRACKING_URI`` names
one SQLite file. SQLite serialises their writes itself (MLflow gives each session a 20 s busy
timeout), but MLflow's creation of a new store is not safe across processes: each process
finds no tables, runs the schema migrations and inserts the default experiment, and the others
fail half-way (``table ... already exists``, ``duplicate column name``, ``Online migration expected
to match one row``). And a migration cut short by Ctrl-C leaves a store every later run fails
on (``index ... already exists``). So:

- ``open_client`` builds the ``MlflowClient`` (whose construction creates and migrates a new
  store) while holding ``store_lock``, an OS lock on the file ``<db>-initlab.lock`` beside the
  database (an empty file, left in place; the OS frees the lock if its holder dies);
  ``store_lock`` also makes an experiment's get-or-create one step;
- ``initlab track`` holds a lock per study (``<db>-initlab-track-<study>.lock``) while it looks
  for a study's runs and logs the missing ones, so two of them at once log each model once;
- ``deferred_signals`` holds SIGINT and SIGTERM during short store writes (creating the schema,
  creating or ending a run) and delivers them right after, so an interruption never leaves a
  half-migrated store, or a run created but never ended.

Stores that are not SQLite files (a server, PostgreSQL) need no lock: ``store_lock`` does nothing
(there, two ``initlab track`` of one study started at the same moment may both log a model).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from initlab.config import StoreError  # noqa: F401 (raised here, re-exported)

LOCK_SUFFIX = "-initlab.lock"
LOCK_TIMEOUT_S = 300.0  # creating a store takes seconds; this only bounds a stuck holder


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for other stores and in-memory ones."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


@contextlib.contextmanager
def store_lock(uri: str, timeout: float = LOCK_TIMEOUT_S, name: str = "") -> Iterator[None]:
    """Hold a lock shared by every initlab process using the SQLite store ``uri``; no-op otherwise.

    ``name`` picks another lock of the same store (``<db>-initlab-<name>.lock``), one that a
    holder of the first may take.
    """
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    from filelock import FileLock, Timeout

    db.parent.mkdir(parents=True, exist_ok=True)
    suffix = f"-initlab-{name}.lock" if name else LOCK_SUFFIX
    lock = FileLock(f"{db}{suffix}", timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise StoreError(
            f"{uri}: {lock.lock_file} is still locked by another process after {timeout:g} s; "
            "let it finish or stop it, then run again"
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def deferred_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold ``signums`` until the block ends, then deliver the first one to the handler it had.

    For short writes only (the block cannot be interrupted). Outside the main thread, where Python
    delivers no signal, it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum, frame):
        held.append(signum)

    previous = {s: signal.signal(s, hold) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            signal.raise_signal(held[0])  # the restored handler raises (KeyboardInterrupt) here


def open_client(uri: str):
    """An ``MlflowClient`` for ``uri``; a new store is created by one process, in one piece."""
    from mlflow.tracking import MlflowClient

    with store_lock(uri), deferred_signals():
        return MlflowClient(uri)
