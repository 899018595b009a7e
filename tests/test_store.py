"""The store helpers: URIs checked before use, signals held during a store write, the per-study lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO
from initlab.core.signals import Terminated, sigterm_raises
from initlab.tracking.store import StoreError, check_uri, deferred_signals, sqlite_file, store_lock


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("sqlite:///mlflow.db", "mlflow.db"),
        ("sqlite:////abs/dir/mlflow.db", "/abs/dir/mlflow.db"),
        ("sqlite:///runs/m.db?timeout=30", "runs/m.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("http://127.0.0.1:5000", None),
        ("postgresql://u@host/db", None),
    ],
)
def test_sqlite_file_of_a_tracking_uri(uri, path):
    got = sqlite_file(uri)
    assert (None if got is None else str(got)) == path


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("foo://host/x", "unknown scheme 'foo'"),
        ("sqlite:///:memory:", "an in-memory store loses every run"),
        ("sqlite://", "an in-memory store loses every run"),
        ("sqlite:///{tmp}/afile/mlflow.db", "afile is a file, not a folder"),
        ("sqlite:///{tmp}", "is a folder, not a database file"),
        ("postgresql+psycopg2://u@127.0.0.1:1/db", "its database driver is not installed"),
        ("mysql+nodriver://u@127.0.0.1:1/db", "MLFLOW_TRACKING_URI=mysql+nodriver://"),
    ],
)
def test_a_uri_mlflow_cannot_use_is_one_line_naming_it(tmp_path, uri, says):
    (tmp_path / "afile").write_text("")
    uri = uri.format(tmp=tmp_path)
    with pytest.raises(StoreError) as err:
        check_uri(uri)
    assert says in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"MLFLOW_TRACKING_URI={uri}")


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:///mlflow.db",
        "file:///tmp/mlruns",
        "http://127.0.0.1:5000",
        "https://mlflow.example.org",
        "databricks",
    ],
)
def test_uris_mlflow_can_use_pass(uri):
    check_uri(uri)


def test_a_signal_during_a_deferred_block_is_delivered_when_it_ends():
    handler = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the write")  # not cut off by the signal
    assert done == ["the write"]
    assert signal.getsignal(signal.SIGINT) is handler


def test_sigterm_in_a_deferred_block_reaches_the_stage_handler():
    with pytest.raises(Terminated):
        with sigterm_raises(), deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_disabled_deferral_lets_the_signal_through_at_once():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals(enabled=False):
            os.kill(os.getpid(), signal.SIGINT)
            done.append("not reached")
    assert done == []


def test_the_study_lock_is_shared_with_other_processes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    other = (
        "import sys; from initlab.tracking.store import store_lock, StoreError\n"
        "try:\n    with store_lock(sys.argv[1], sys.argv[2], timeout=0.2): pass\n"
        "except StoreError as e: sys.exit(str(e))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    def other_takes(name):
        return subprocess.run([sys.executable, "-c", other, uri, name], env=env, capture_output=True, text=True)

    with store_lock(uri, "track-line"):
        assert (tmp_path / "mlflow.db-initlab-track-line.lock").exists()
        out = other_takes("track-line")
        assert out.returncode == 1 and out.stderr.count("\n") == 1
        assert "mlflow.db-initlab-track-line.lock is still locked by another process after 0.2 s" in out.stderr
        assert other_takes("track-circles").returncode == 0  # another study's lock is free
    assert other_takes("track-line").returncode == 0
    assert not (tmp_path / "mlflow.db").exists()  # the lock creates no store


def test_a_store_another_process_linked_meanwhile_is_used_not_replaced(tmp_path, monkeypatch):
    """Two processes find no store and each builds one aside; the second to finish must keep the
    first's, which may already be in use (replacing it swapped the file under the first's open
    connections: "database disk image is malformed")."""
    import sqlite3

    import mlflow.store.tracking.sqlalchemy_store as sa

    from initlab.tracking.store import _sqlite_ready

    db = tmp_path / "mlflow.db"
    real = sa.SqlAlchemyStore

    class SlowBuild(real):
        def __init__(self, uri, root):  # meanwhile, another process links its store and uses it
            super().__init__(uri, root)
            if not db.exists():
                other = real(f"sqlite:///{tmp_path / 'other.db'}", root)
                other.create_experiment("theirs")
                other.engine.dispose()
                os.link(tmp_path / "other.db", db)

    monkeypatch.setattr(sa, "SqlAlchemyStore", SlowBuild)
    _sqlite_ready(f"sqlite:///{db}", db)
    con = sqlite3.connect(db)
    assert ("theirs",) in con.execute("SELECT name FROM experiments").fetchall()
    con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "other.db"]  # its own build removed
