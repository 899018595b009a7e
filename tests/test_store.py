"""The store helpers: the SQLite lock, signals held during store writes, runs always ended."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO
from initlab import tracking
from initlab.store import LOCK_SUFFIX, deferred_signals, sqlite_file, store_lock


@pytest.mark.parametrize(("uri", "path"), [
    ("sqlite:///mlflow.db", "mlflow.db"),
    ("sqlite:////abs/dir/mlflow.db", "/abs/dir/mlflow.db"),
    ("sqlite:///runs/m.db?timeout=30", "runs/m.db"),
    ("sqlite://", None),
    ("sqlite:///:memory:", None),
    ("http://127.0.0.1:5000", None),
    ("postgresql://u@host/db", None),
])  # fmt: skip
def test_sqlite_file_of_a_tracking_uri(uri, path):
    got = sqlite_file(uri)
    assert (None if got is None else str(got)) == path


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
    with pytest.raises(tracking.Terminated):
        with tracking.sigterm_raises(), deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)


def test_the_store_lock_is_shared_with_other_processes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'sub' / 'mlflow.db'}"
    other = ("import sys; from initlab.store import store_lock, StoreError\n"
             "try:\n    with store_lock(sys.argv[1], timeout=0.2): pass\n"
             "except StoreError as e: sys.exit(str(e))")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with store_lock(uri):
        assert (tmp_path / "sub" / f"mlflow.db{LOCK_SUFFIX}").exists()
        out = subprocess.run([sys.executable, "-c", other, uri], env=env, capture_output=True, text=True)
        assert out.returncode == 1 and out.stderr.count("\n") == 1
        assert f"mlflow.db{LOCK_SUFFIX} is still locked by another process after 0.2 s" in out.stderr
    out = subprocess.run([sys.executable, "-c", other, uri], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "sub" / "mlflow.db").exists()  # the lock creates no store


def test_a_named_lock_is_another_lock_of_the_same_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    other = ("import sys; from initlab.store import store_lock\n"
             "with store_lock(sys.argv[1], timeout=0.2): pass")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with store_lock(uri, name="track-line"):
        assert (tmp_path / "mlflow.db-initlab-track-line.lock").exists()
        out = subprocess.run([sys.executable, "-c", other, uri], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr  # the store's own lock is free meanwhile


class SignalAfterCreate:
    """A client whose create_run is followed at once by a signal: the worst moment for one."""

    def __init__(self, cl, signum):
        self.cl, self.signum = cl, signum

    def create_run(self, *args, **kwargs):
        run = self.cl.create_run(*args, **kwargs)
        os.kill(os.getpid(), self.signum)
        return run

    def __getattr__(self, name):
        return getattr(self.cl, name)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_right_after_a_run_is_created_ends_it_killed(signum):
    cl = tracking.client()
    exp = tracking.experiment_id(cl, "line")
    body = []
    with pytest.raises(KeyboardInterrupt), tracking.sigterm_raises():
        with tracking.new_run(SignalAfterCreate(cl, signum), exp, run_name="r") as rid:
            body.append(rid)
    assert body == []  # interrupted before the body
    [run] = cl.search_runs([exp])
    assert run.info.status == "KILLED"


def test_a_run_left_open_in_mlflows_fluent_api_stays_killed(monkeypatch):
    import mlflow

    cl = tracking.client()
    exp = tracking.experiment_id(cl, "line")
    with pytest.raises(KeyboardInterrupt):
        with tracking.new_run(cl, exp, run_name="r") as rid:
            mlflow.start_run(run_id=rid)  # as if a signal landed before its `with` began
            raise KeyboardInterrupt
    mlflow.end_run()  # what MLflow's exit hook does: FINISHED unless the run was ended there
    assert cl.get_run(rid).info.status == "KILLED"


def test_runs_end_finished_or_failed():
    cl = tracking.client()
    exp = tracking.experiment_id(cl, "line")
    with tracking.new_run(cl, exp, run_name="ok") as ok:
        pass
    with pytest.raises(ValueError), tracking.new_run(cl, exp, run_name="bad") as bad:
        raise ValueError("boom")
    assert cl.get_run(ok).info.status == "FINISHED" and cl.get_run(bad).info.status == "FAILED"
