"""The MLflow store: checked and reached within a bounded time, created whole, written without cuts.

``open_client(uri, timeout)`` is the one way ``initlab track`` gets a store. Before MLflow sees the
URI, it is checked, and the store is reached with a deadline, so a wrong or absent store is one
line naming the URI within ``tracking.store_timeout_s`` (MLflow alone retries an absent server
for about 4 minutes and a corrupt SQLite file for about 100 s):

- the scheme is one MLflow can use, and the database driver it names is installed;
- ``sqlite:///:memory:`` is refused (its runs vanish when ``track`` exits);
- a SQLite file is a whole MLflow store (``PRAGMA quick_check`` and its schema revision), or
  absent: then it is created aside (``.<db>.<pid>.tmp``) and linked into place, so a store is
  never left half-migrated by a kill or a full disk; a temporary left by a dead process is removed;
- a server answers ``/health``, and MLflow's own HTTP retries are bounded by the same deadline;
- a database server accepts a connection within the deadline.

``deferred_signals`` holds Ctrl-C and SIGTERM during one write to a SQL store (tens of ms): an
interruption inside SQLAlchemy's flush leaves its transaction open, and the run could then not be
ended KILLED. ``store_lock`` serialises two ``initlab track`` of one study on one SQLite file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from initlab.core.io import pid_alive
from initlab.errors import StoreError  # noqa: F401 (raised here, re-exported)

LOCK_TIMEOUT_S = 300.0  # a study's logging takes seconds; this only bounds a stuck holder
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
SCHEMES = (*SQL_SCHEMES, "http", "https", "file", "databricks")
ALLOWED = "sqlite:///<file>, postgresql://, mysql://, mssql://, http(s)://<server>, file:<folder>"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for other stores and in-memory ones."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def is_sql(uri: str) -> bool:
    return urlparse(uri).scheme.split("+")[0] in SQL_SCHEMES


def check_uri(uri: str) -> None:
    """One line for a URI MLflow cannot use, before anything is opened."""
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme not in SCHEMES and not (scheme == "" and uri):
        raise StoreError(f"MLFLOW_TRACKING_URI={uri}: unknown scheme {scheme!r}; use {ALLOWED}")
    if scheme == "sqlite":
        db = sqlite_file(uri)
        if db is None:
            raise StoreError(
                f"MLFLOW_TRACKING_URI={uri}: an in-memory store loses every run when "
                "track exits; use a file, e.g. sqlite:///mlflow.db"
            )
        parent = next((p for p in [db.parent, *db.parent.parents] if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise StoreError(f"MLFLOW_TRACKING_URI={uri}: {parent} is a file, not a folder")
        if db.is_dir():
            raise StoreError(f"MLFLOW_TRACKING_URI={uri}: {db} is a folder, not a database file")
    elif scheme in SQL_SCHEMES:
        from sqlalchemy.engine import make_url

        try:
            make_url(uri).get_dialect().import_dbapi()
        except ImportError as exc:
            raise StoreError(
                f"MLFLOW_TRACKING_URI={uri}: its database driver is not installed "
                f"({exc}); install it, or use a driver the project has "
                "(postgresql:// and postgresql+psycopg:// use psycopg 3)"
            ) from None
        except Exception as exc:  # noqa: BLE001 - an unknown dialect or a malformed URL
            raise StoreError(f"MLFLOW_TRACKING_URI={uri}: {exc}") from None


def _sqlite_ready(uri: str, db: Path) -> None:
    """Check an existing store file, or create a new one aside and link it into place."""
    import sqlite3

    for old in db.parent.glob(f".{db.name}.*.tmp*"):  # left by a process killed while creating
        pid = old.name.removeprefix(f".{db.name}.").split(".")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            old.unlink(missing_ok=True)
    if db.exists() and db.stat().st_size > 0:
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                check = con.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(check)
                con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
            finally:
                con.close()
        except (sqlite3.Error, TypeError) as exc:
            reason = "no schema revision" if isinstance(exc, TypeError) else str(exc)
            raise StoreError(
                f"MLFLOW_TRACKING_URI={uri}: {db} is not a whole MLflow store "
                f"({reason}); move it aside (mv {db} {db}.broken) and run again, "
                "which logs every model to a new store"
            ) from None
        _writable(uri, db)
        return
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        SqlAlchemyStore(f"sqlite:///{tmp}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH).engine.dispose()
        if db.exists() and db.stat().st_size == 0:  # an empty file: nothing in it to keep
            os.replace(tmp, db)
        else:  # never replace: another process may have linked its store meanwhile, and be using it
            with contextlib.suppress(FileExistsError):  # another process created it first: use it
                os.link(tmp, db)
    except Exception as exc:  # noqa: BLE001 - the OS's refusal, through SQLAlchemy or MLflow
        said = (
            exc.strerror
            if isinstance(exc, OSError) and exc.strerror
            else " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        )
        raise StoreError(
            f"MLFLOW_TRACKING_URI={uri}: cannot create the store {db} in {db.parent} ({said}); "
            "make the folder writable, or point MLFLOW_TRACKING_URI elsewhere"
        ) from None
    finally:
        for f in db.parent.glob(f"{tmp.name}*"):
            f.unlink(missing_ok=True)


def _writable(uri: str, db: Path) -> None:
    """Write to the store in a transaction rolled back, changing nothing: a store the OS will not let us
    write (a read-only or immutable file or folder) is one line now, before MLflow's first write."""
    import sqlite3

    try:
        con = sqlite3.connect(db, timeout=10, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            try:  # SQLite opens a file it may not write read-only, silently: only a write tells
                con.execute("CREATE TABLE initlab_write_probe (x)")
            finally:
                con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StoreError(
            f"MLFLOW_TRACKING_URI={uri}: {db} cannot be written ({exc}); make it and its "
            "folder writable (SQLite writes -wal and -shm files beside it)"
        ) from None


def _reach(uri: str, timeout: float) -> None:
    """Reach a server or database within ``timeout`` seconds, or raise one line naming it."""
    scheme = urlparse(uri).scheme.split("+")[0]
    try:
        if scheme in ("http", "https"):
            import requests

            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout))))
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a line per run
            requests.get(f"{uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
            _login(uri, timeout)
        elif scheme in SQL_SCHEMES and scheme != "sqlite":
            import sqlalchemy

            engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": max(1, int(timeout))})
            try:
                with engine.connect():
                    pass
            finally:
                engine.dispose()
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the client library raises, in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StoreError(
            f"MLFLOW_TRACKING_URI={uri}: no store answered within {timeout:g} s "
            f"({first[:300]}); start it or point MLFLOW_TRACKING_URI at another "
            "(tracking.store_timeout_s sets the wait)"
        ) from None


def _login(uri: str, timeout: float) -> None:
    """A server that requires a login (MLflow's basic-auth app) accepts ours, or one line saying so."""
    import requests

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    auth = (user, password) if user and password else None
    r = requests.get(
        f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        auth=auth,
        timeout=timeout,
    )
    if r.status_code in (401, 403):
        said = "refused the login of MLFLOW_TRACKING_USERNAME" if auth else "requires a login"
        raise StoreError(
            f"MLFLOW_TRACKING_URI={uri}: the server {said} ({r.status_code}); set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your account's"
        )


def _wal(dbapi_connection, connection_record) -> None:
    """Open SQLite connections in WAL mode with ``synchronous=NORMAL``.

    MLflow commits several times per run; with SQLite's rollback journal each commit is an
    fsync, in WAL it is not (a fifth of ``track``'s store time in an A/B on this machine), and the
    MLflow UI can read while a pipeline writes. SQLAlchemy's per-connection PRAGMA recipe.
    """
    import sqlite3

    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute("PRAGMA journal_mode = WAL")
        dbapi_connection.execute("PRAGMA synchronous = NORMAL")


def open_client(uri: str, timeout: float):
    """An ``MlflowClient`` for ``uri``, checked and reached first (see the module's docstring)."""
    check_uri(uri)
    db = sqlite_file(uri)
    if db is not None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        if not event.contains(Engine, "connect", _wal):
            event.listen(Engine, "connect", _wal)
        _sqlite_ready(uri, db)
    else:
        _reach(uri, timeout)
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


@contextlib.contextmanager
def store_lock(uri: str, name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the lock ``<db>-initlab-<name>.lock`` of the SQLite store ``uri``; no-op for others.

    An OS lock on a file left in place: the OS frees it when its holder dies.
    """
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(f"{db}-initlab-{name}.lock", timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise StoreError(
            f"{uri}: {lock.lock_file} is still locked by another process after "
            f"{timeout:g} s; let it finish or stop it, then run again"
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def deferred_signals(enabled: bool = True) -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver the first to its handler.

    For short writes only. Outside the main thread, where Python delivers no signal, or when not
    ``enabled``, it does nothing.
    """
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    signums = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            signal.raise_signal(held[0])  # the restored handler raises (KeyboardInterrupt) here
