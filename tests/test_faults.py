"""Faults that are not bad params: writes the OS refuses, broken stage inputs found by track, and a
track that fails halfway. Each ends in one line and a non-zero exit, with the outputs and the
store as they were; the next track logs exactly the runs missing."""

from __future__ import annotations

import errno
import os
import pickle
import resource
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO
from initlab.cli import app
from test_cli import changes, line_cut, store_rows

runner = CliRunner()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """line cut to 8 models (2 variants of 3 seeds, 2 reproductions) through every stage and track."""
    root = tmp_path_factory.mktemp("faults")
    p = line_cut(inits=["default", "zeros"], seeds=[0, 1, 2])
    p["studies"] = {"line": p["studies"]["line"]}
    p["tracking"]["log_models"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        for stage in ("download", "prepare", "normalize", "train", "evaluate", "track"):
            result = runner.invoke(app, [stage, "line"])
            assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def copy(project, tmp_path, monkeypatch):
    shutil.copytree(project, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def folder_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the store's (mlflow.db and SQLite's -wal, -shm beside it, which
    a reader touches) and the lock files, with its content."""
    return {
        str(f.relative_to(root)): f.read_bytes()
        for f in sorted(root.rglob("*"))
        if f.is_file() and not f.name.startswith("mlflow.db")
    }


def _initlab(args: list[str], root: Path, file_limit: int | None = None) -> subprocess.CompletedProcess:
    """``initlab`` in a process of its own (what reaches its terminal), with at most ``file_limit``
    bytes a file (``ulimit -f``: writes beyond it fail with EFBIG, as on a full disk)."""

    def limit() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    return subprocess.run(
        [sys.executable, "-m", "initlab", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
    )


def _active(db: Path) -> list[tuple[str, str]]:
    """(status, run key) of every run not deleted."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(
            "SELECT r.status, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "AND t.key = 'initlab.run_key' WHERE r.lifecycle_stage = 'active'"
        ).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize(
    ("stage", "path"),
    [
        ("train", "pipeline/train/line: cannot write: the OS refused a write"),
        ("evaluate", "pipeline/evaluate/line.csv: cannot write: File too large (errno 27)"),
        ("prepare", "pipeline/prepared/line.npz: cannot write: File too large (errno 27)"),
    ],
)
def test_a_full_disk_is_one_line_naming_the_output_and_changes_nothing(copy, stage, path):
    files, rows = folder_bytes(copy), store_rows(copy / "mlflow.db")
    result = _initlab([stage, "line"], copy, file_limit=1024)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"initlab: error: {path}"), result.stderr
    assert changes(files, folder_bytes(copy)) == [] and changes(rows, store_rows(copy / "mlflow.db")) == []


def test_an_output_that_cannot_be_replaced_stops_train_before_training(copy, monkeypatch):
    import initlab.core.io

    files = folder_bytes(copy)
    trained = []
    monkeypatch.setattr("initlab.training.study.train_study", lambda *a, **k: trained.append(a))
    real = os.access
    monkeypatch.setattr(
        initlab.core.io.os, "access", lambda p, mode: not str(p).endswith("train/line") and real(p, mode)
    )
    result = runner.invoke(app, ["train", "line"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "pipeline/train/line: cannot write: the OS says it is not writable" in result.output
    assert trained == [] and changes(files, folder_bytes(copy)) == []


def test_an_output_folder_the_os_will_not_let_go_is_one_line_and_stays_whole(copy, monkeypatch):
    import initlab.core.io

    files = folder_bytes(copy)
    real = os.replace

    def refuse(src, dst):  # the old output cannot be moved aside (an immutable folder)
        if str(src).endswith("pipeline/train/line"):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(src))
        return real(src, dst)

    monkeypatch.setattr(initlab.core.io.os, "replace", refuse)
    result = runner.invoke(app, ["train", "line"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "pipeline/train/line: cannot write: Operation not permitted (errno 1)" in result.output
    assert changes(files, folder_bytes(copy)) == []  # the old weights are all there


def _read_only(path: Path) -> None:
    """Make ``path`` unwritable for this user: chmod, or for root (whom modes do not stop) chattr +i."""
    if os.geteuid() != 0:
        path.chmod(0o444)
    elif shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        pytest.skip("root, and no chattr +i here: nothing makes a file read-only for root")


def _writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=False)
    path.chmod(0o644)


def test_a_read_only_store_is_one_line_with_no_library_traceback(copy):
    (copy / "pipeline" / "tracking.json").unlink()  # track has something to write
    files, rows = folder_bytes(copy), store_rows(copy / "mlflow.db")
    _read_only(copy / "mlflow.db")
    try:
        result = _initlab(["track"], copy)
    finally:
        _writable(copy / "mlflow.db")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"initlab: error: MLFLOW_TRACKING_URI=sqlite:///{copy / 'mlflow.db'}: {copy / 'mlflow.db'} cannot be "
        "written (attempt to write a readonly database); make it and its folder writable (SQLite writes -wal "
        "and -shm files beside it)"
    ]
    assert changes(files, folder_bytes(copy)) == [] and changes(rows, store_rows(copy / "mlflow.db")) == []


def _no_store(root: Path) -> None:
    """No store: mlflow.db with its -wal and -shm files (a -wal left alone would be replayed), mlruns."""
    for f in root.glob("mlflow.db*"):
        f.unlink()
    shutil.rmtree(root / "mlruns", ignore_errors=True)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("content", [b"garbage", pickle.dumps(_Evil())], ids=["garbage", "pickle-with-code"])
def test_broken_weights_found_by_track_change_nothing_in_the_store(copy, content):
    # One weights file broken: its run's key changes, so track would log that variant again.
    _no_store(copy)
    assert runner.invoke(app, ["track"]).exit_code == 0  # a store holding line's runs
    (copy / "pipeline" / "train" / "line" / "weights" / "zeros-bce-none-lr2-s1.pt").write_bytes(content)
    files, rows = folder_bytes(copy), store_rows(copy / "mlflow.db")
    result = runner.invoke(app, ["track"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "zeros-bce-none-lr2-s1.pt: unreadable" in result.output
    assert "run `dvc repro -f train@line`" in result.output
    assert not (copy / "pwned").exists()
    assert changes(files, folder_bytes(copy)) == [] and changes(rows, store_rows(copy / "mlflow.db")) == []


@pytest.mark.parametrize("fail_at", [1, 2, 4, 7])
def test_after_a_track_fails_halfway_the_next_logs_exactly_the_missing_runs(copy, monkeypatch, fail_at):
    import initlab.tracking.log

    _no_store(copy)
    calls = []
    real = initlab.tracking.log.log_batch

    def full_disk(*args, **kwargs):  # the fail_at-th write of metrics fails, as on a full disk
        calls.append(1)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device", "mlflow.db")
        return real(*args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(initlab.tracking.log, "log_batch", full_disk)
        result = runner.invoke(app, ["track"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, (result.output, len(calls))
    assert "mlflow.db: cannot write: No space left on device (errno 28)" in result.output
    before = _active(copy / "mlflow.db")
    assert "FAILED" in {status for status, _ in before}  # litter to clean up
    result = runner.invoke(app, ["track"])
    assert result.exit_code == 0, result.output
    after = _active(copy / "mlflow.db")
    keys = [key for _, key in after]
    assert len(keys) == len(set(keys)) == 8 + 4  # 8 runs, 4 parents: no duplicate
    assert {status for status, _ in after} == {"FINISHED"}  # no FAILED twin left
    logged = int(result.output.split("track: ")[-1].split(" runs logged")[0])
    assert logged == 8 - len(_finished_seeds(copy / "mlflow.db", before))  # exactly the missing seeds
    assert "0 runs logged, 8 already there" in runner.invoke(app, ["track"]).output


def _finished_seeds(db: Path, before: list[tuple[str, str]]) -> set[str]:
    """Keys of seeds' runs (they have a parent) FINISHED in ``before``."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        seeds = {
            k
            for (k,) in con.execute(
                "SELECT t.value FROM tags t JOIN tags p ON p.run_uuid = t.run_uuid "
                "AND p.key = 'mlflow.parentRunId' WHERE t.key = 'initlab.run_key'"
            )
        }
    finally:
        con.close()
    return {key for status, key in before if status == "FINISHED" and key in seeds}
