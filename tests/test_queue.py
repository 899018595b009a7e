"""DVC's own queue: experiments run by `dvc queue start -j 2` log to the project's MLflow store.

DVC runs a queued experiment in a temporary workspace (``.dvc/tmp/exps/<tmp>``) that it deletes
afterwards; ``initlab track`` there must write to the project's ``mlflow.db`` (and ``mlruns``),
not to one inside the workspace, and tag each run with the experiment's name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import MIRROR, REPO
from initlab.tracking.location import project_root, tracking_uri

LRS = ("1.0", "0.5", "0.25", "4.0")  # studies.line.train.lr of the four queued experiments
QUEUE_TIMEOUT_S = 900


def test_the_project_root_of_a_dvc_experiment_workspace(tmp_path, monkeypatch):
    work = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    work.mkdir(parents=True)
    assert project_root(work) == tmp_path / "proj"
    assert project_root(tmp_path / "proj") == tmp_path / "proj"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(work)
    assert tracking_uri() == f"sqlite:///{tmp_path / 'proj' / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path / "proj")
    assert tracking_uri() == "sqlite:///mlflow.db"


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


@pytest.mark.slow
def test_queued_experiments_in_two_workers_log_every_run_once_to_the_project_store(tmp_path):
    work = tmp_path / "project"
    shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / ".dvc", work / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, work / name)
    shutil.copy(REPO / "tests" / "ci" / "report.yaml", work / "report.yaml")
    ci = yaml.safe_load((REPO / "tests" / "ci" / "params.yaml").read_text())
    ci["studies"] = {k: ci["studies"][k] for k in ("line",)}  # the queue is what is tested
    (work / "params.yaml").write_text(yaml.safe_dump(ci, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the project's default
    env.update(
        INITLAB_DATA_MIRROR=str(MIRROR),
        MLFLOW_DISABLE_TELEMETRY="true",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost"]
    run(["git", "init", "-q"], work, env)
    # The baseline logs elsewhere, so that the queued runs create the project's store and experiment.
    run(["dvc", "repro"], work, {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'baseline.db'}"})
    run(["git", "add", "-A"], work, env)
    run([*git, "commit", "-qm", "baseline"], work, env)
    for lr in LRS:
        run(
            [
                "dvc",
                "exp",
                "run",
                "--queue",
                "-n",
                f"lr-{lr.replace('.', '_')}",
                "-S",
                f"studies.line.train.lr=[{lr}]",
            ],
            work,
            env,
        )
    t0 = time.monotonic()
    # `dvc queue start` returns once its workers are up, but was seen to hang after they had run
    # the queue; so it runs in the background, in its own process group, killed at the end.
    starter = subprocess.Popen(
        ["dvc", "queue", "start", "-j", "2"],
        cwd=work,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:  # bounded: the queue's own status, polled every 5 s
            status = run(["dvc", "queue", "status"], work, env, timeout=60)
            if not any(s in status for s in ("Queued", "Running")):
                break
            assert time.monotonic() - t0 < QUEUE_TIMEOUT_S, status
            time.sleep(5)
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=work, env=env, capture_output=True, timeout=120)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(starter.pid, signal.SIGKILL)
        starter.wait(timeout=30)
    if "Failed" in status:  # the first failed experiment's log, for the message
        name = re.search(r"(lr-\S+)\s+\S+ \S+\s+Failed", status).group(1)
        logs = subprocess.run(["dvc", "queue", "logs", name], cwd=work, env=env, capture_output=True, text=True)
        status += f"\n--- dvc queue logs {name}:\n{(logs.stdout + logs.stderr)[-3000:]}"
    assert status.count("Success") == len(LRS) and "Failed" not in status, status
    exps = work / ".dvc" / "tmp" / "exps"
    assert not exps.exists() or not list(exps.rglob("mlflow.db"))

    con = sqlite3.connect(f"file:{work / 'mlflow.db'}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT r.run_uuid, r.status, r.artifact_uri, "
            "(SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'dvc.exp_name'), "
            "(SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'initlab.run_key'), "
            "(SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId') "
            "FROM runs r JOIN experiments e USING (experiment_id) WHERE e.name = 'initlab-line'"
        ).fetchall()
    finally:
        con.close()
    assert {status for _, status, *_ in rows} == {"FINISHED"}
    keys = [key for *_, key, _ in rows]
    assert len(keys) == len(set(keys))  # no run logged twice
    seeds = [r for r in rows if r[5] is not None]
    per_exp = {name: sum(1 for r in seeds if r[3] == name) for name in {r[3] for r in seeds}}
    assert set(per_exp) == {f"lr-{lr.replace('.', '_')}" for lr in LRS}
    # Each experiment trained the line study at its own lr: every seed's run is its own.
    runs_per_exp = 14  # the CI profile's line study: 2 inits x 2 losses x 3 seeds + 2 reproduce runs
    assert all(n == runs_per_exp for n in per_exp.values()), per_exp
    print(f"queue of {len(LRS)} experiments, 2 workers: {time.monotonic() - t0:.0f} s")
    for _, _, artifact_uri, *_ in rows:  # artifacts in the project, not in a deleted workspace
        path = artifact_uri.removeprefix("file://")
        assert path.startswith(f"{work}/mlruns/") and ".dvc" not in path, artifact_uri
