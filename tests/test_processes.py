"""Real processes: `initlab train` and `initlab track` stopped by a signal, and two `initlab track`
at once on one SQLite store (a new one; one study twice).

Each test runs `python -m initlab` in a temporary project whose data stages are done (copied from
``small_root``), so these are slow tests: run them with ``pytest -m slow tests/test_processes.py``.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import MIRROR, REPO

pytestmark = pytest.mark.slow
TIMEOUT = 300  # seconds for any one process; far above what they need


def tiny_params(study: str, **train) -> dict:
    """The repository's params with one study cut down (one init, loss, lr and seed)."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    st = p["studies"][study]["train"]
    st.update(inits=st["inits"][:1], losses=st["losses"][-1:], lr=st["lr"][:1], seeds=[0], reproduce=None, **train)
    return p


def project_env(root: Path) -> dict:
    """The environment to run initlab in ``root``: this checkout's source, its own MLflow store."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "INITLAB_DATA_MIRROR": str(MIRROR),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def make_project(root: Path, small_root, params: dict) -> tuple[Path, dict]:
    """A project in ``root`` with every study's data stages done, and the env to run it."""
    shutil.copytree(small_root.pipeline, root / "pipeline")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root, project_env(root)


def initlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "initlab", *args]


def default_sigint() -> None:
    # A shell's background job ignores SIGINT, and Python keeps an ignored SIGINT ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def runs(db: Path) -> list[tuple[str, str]]:
    """(run id, status) of every run in the store; [] while it or its tables do not exist yet."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT run_uuid, status FROM runs").fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError:  # no file yet, no table yet
        return []


def active_runs(db: Path) -> dict[str, str]:
    """run id -> status of the runs not deleted (track deletes, soft, the leftovers of a failed one)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return dict(con.execute("SELECT run_uuid, status FROM runs WHERE lifecycle_stage = 'active'").fetchall())
    finally:
        con.close()


def schema_version(db: Path) -> str | None:
    """The store's alembic revision; None while its migrations have not begun."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        finally:
            con.close()
    except (sqlite3.OperationalError, TypeError):  # no file, no table, no row yet
        return None


def parents(db: Path) -> set[str]:
    """The variants' runs (those that are nobody's child)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        sql = (
            "SELECT run_uuid FROM runs WHERE run_uuid NOT IN "
            "(SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId')"
        )
        return {r for (r,) in con.execute(sql)}
    finally:
        con.close()


def metric_keys(db: Path) -> dict[str, set[str]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        out: dict[str, set[str]] = {}
        for rid, key in con.execute("SELECT DISTINCT run_uuid, key FROM metrics"):
            out.setdefault(rid, set()).add(key)
        return out
    finally:
        con.close()


def files(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


class Terminal:
    """A process whose stderr is a terminal, so that tqdm shows its progress there."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm needs a width
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            preexec_fn=default_sigint,
        )
        os.close(slave)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, args=(master,), daemon=True)
        self.reader.start()

    def _read(self, fd: int) -> None:
        try:
            while chunk := os.read(fd, 4096):
                self.chunks.append(chunk)
        except OSError:  # EIO: the process closed the terminal
            pass
        finally:
            os.close(fd)

    @property
    def stderr(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not ready():
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {what}:\n{self.stderr}"
            assert time.monotonic() < deadline, f"no {what} after {TIMEOUT} s:\n{self.stderr}"
            time.sleep(0.02)

    def finish(self) -> int:
        self.proc.stdout.read()
        code = self.proc.wait(timeout=TIMEOUT)
        self.reader.join(timeout=10)
        return code


# MLflow's own log lines (INFO: creating a new store's tables).
MLFLOW_LOG = r"\d{4}/\d\d/\d\d .* INFO "


def messages(stderr: str) -> list[str]:
    """stderr without progress bars and MLflow's log lines: what the user is told."""
    lines = (s.strip() for s in re.split(r"[\r\n]+", stderr))
    return [s for s in lines if s and not re.match(rf"(train|track) \w+:|{MLFLOW_LOG}", s)]


def stage(root: Path, env: dict, *args: str) -> None:
    out = subprocess.run(initlab(*args), cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, f"initlab {' '.join(args)}:\n{out.stderr}"


def tracked(root: Path) -> dict:
    """The track stage's output (run ids) and its counts (in the timings file)."""
    return {
        **json.loads((root / "pipeline" / "tracking.json").read_text()),
        **json.loads((root / "pipeline" / "timings" / "track.json").read_text()),
    }


# --------------------------------------------------------------------------- interruption

# heart_rate, 3 models (none / zscore / batchnorm): ~1-4 s of training, time to land a signal.
TRAIN_PARAMS = tiny_params("heart_rate", epochs=40)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_during_training_writes_nothing_and_the_rerun_completes(small_root, tmp_path, signame):
    root, env = make_project(tmp_path, small_root, TRAIN_PARAMS)
    before = files(root / "pipeline")
    t = Terminal(initlab("train", "heart_rate"), root, env)
    t.wait_for(lambda: "train heart_rate" in t.stderr, "training progress")
    t.proc.send_signal(getattr(signal, signame))
    code = t.finish()

    assert code == 130, t.stderr
    assert messages(t.stderr) == ["initlab: interrupted; no output was written"], t.stderr
    assert not (root / "pipeline" / "train").exists()
    assert files(root / "pipeline") == before  # nothing written, no temporary left behind
    assert not (root / "mlflow.db").exists()  # training never opens the store

    stage(root, env, "train", "heart_rate")
    out = root / "pipeline" / "train" / "heart_rate"
    table = pd.read_csv(out / "runs.csv")
    assert len(table) == 3 and len(list((out / "weights").iterdir())) == 3
    assert "mlflow_run_id" not in table.columns and not (root / "mlflow.db").exists()


# heart_rate, 30 models (3 normalisations x 10 seeds), trained and evaluated: `initlab track` then
# takes seconds (importing MLflow and torch, creating the store, 30 runs with their models), time
# to land a signal while the new store is created or while runs are logged.
TRACK_PARAMS = tiny_params("heart_rate", epochs=5)
TRACK_PARAMS["studies"]["heart_rate"]["train"]["seeds"] = list(range(10))


@pytest.fixture(scope="module")
def evaluated(small_root, tmp_path_factory):
    """A project whose heart_rate train and evaluate stages are done; no MLflow store yet."""
    root, env = make_project(tmp_path_factory.mktemp("evaluated"), small_root, TRACK_PARAMS)
    stage(root, env, "train", "heart_rate")
    stage(root, env, "evaluate", "heart_rate")
    assert not (root / "mlflow.db").exists()
    return root


def store_temporaries(root: Path) -> list[Path]:
    return sorted(root.glob(".mlflow.db.*.tmp*"))


@pytest.mark.parametrize(
    ("signame", "phase"),
    [
        ("SIGTERM", "store"),  # MLflow is migrating the new store, aside: none is left, whole or not
        ("SIGTERM", "logging"),
        ("SIGINT", "logging"),  # a run is RUNNING
    ],
)
def test_a_signal_stops_track_cleanly_and_the_rerun_completes(evaluated, tmp_path, signame, phase):
    root = tmp_path / "project"
    shutil.copytree(evaluated, root)
    env = project_env(root)
    db, before = root / "mlflow.db", files(root / "pipeline")
    t = Terminal(initlab("track", "heart_rate"), root, env)
    if phase == "store":
        t.wait_for(lambda: store_temporaries(root), "a new store being created")
    else:
        t.wait_for(lambda: runs(db), "an MLflow run")
    t.proc.send_signal(getattr(signal, signame))
    code = t.finish()

    assert code == 130, t.stderr
    assert messages(t.stderr) == ["initlab: interrupted; no output was written"], t.stderr
    status = dict(runs(db))
    assert "RUNNING" not in status.values()
    if phase == "logging":
        assert "KILLED" in status.values() and set(status.values()) <= {"KILLED", "FINISHED"}
    if phase == "store":  # created aside: a store is there whole or not at all
        from mlflow.store.db.utils import _get_latest_schema_revision

        assert not db.exists() or schema_version(db) == _get_latest_schema_revision()
    assert store_temporaries(root) == []
    assert not (root / "pipeline" / "tracking.json").exists()
    assert files(root / "pipeline") == before  # nothing written, no temporary left behind

    stage(root, env, "track", "heart_rate")
    done = tracked(root)
    ids, variants = done["runs"]["heart_rate"], done["parents"]["heart_rate"]
    assert len(ids) == 30 and len(variants) == 3  # 3 normalisations x 10 seeds
    seeds_before = {rid: st for rid, st in status.items() if rid not in parents(db)}
    finished = {rid for rid, st in seeds_before.items() if st == "FINISHED"}
    # the rerun logs exactly the missing seeds: those FINISHED before are kept, not logged twice
    assert (done["logged"], done["skipped"]) == (30 - len(finished), len(finished))
    assert finished <= set(ids.values())
    active = active_runs(db)  # no duplicate, no FAILED or KILLED twin beside a FINISHED run
    assert active == {rid: "FINISHED" for rid in [*ids.values(), *variants.values()]}
    killed = {rid for rid, st in seeds_before.items() if st == "KILLED"}
    assert not killed & set(active)  # deleted (soft: `mlflow gc` purges them)
    leftovers = [p for p in (root / "pipeline").rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.parametrize("phase", ["store", "logging"])
def test_a_hard_killed_track_is_recovered_by_the_next(evaluated, tmp_path, phase):
    """SIGKILL: no handler runs. The next `track` removes a half-made store's temporary, ends the
    runs left RUNNING KILLED and logs their models again; no child process outlives the killed one."""
    root = tmp_path / "project"
    shutil.copytree(evaluated, root)
    env = project_env(root)
    db = root / "mlflow.db"
    t = Terminal(initlab("track", "heart_rate"), root, env)
    if phase == "store":
        t.wait_for(lambda: store_temporaries(root), "a new store being created")
    else:
        t.wait_for(lambda: len(runs(db)) >= 3, "three MLflow runs")
    kids = children(t.proc.pid)
    t.proc.kill()
    assert t.finish() == -signal.SIGKILL
    time.sleep(0.2)
    assert [k for k in kids if Path(f"/proc/{k}").exists()] == []
    left = dict(runs(db))
    if phase == "store":
        assert store_temporaries(root) and not db.exists()  # the half-made store is aside, not in place
    else:
        assert "RUNNING" in left.values()

    out = subprocess.run(
        initlab("track", "heart_rate"), cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert out.returncode == 0, out.stderr
    done = tracked(root)
    after = dict(runs(db))
    assert store_temporaries(root) == [] and "RUNNING" not in after.values()
    assert set(after[rid] for rid in done["runs"]["heart_rate"].values()) == {"FINISHED"}
    orphans = [rid for rid, s in left.items() if s == "RUNNING"]
    # ended KILLED; a seed's is then deleted as litter, a variant's parent reused and ended FINISHED
    assert done["orphans"] == len(orphans) and all(after[rid] in ("KILLED", "FINISHED") for rid in orphans)
    finished = {rid for rid, s in left.items() if s == "FINISHED" and rid not in parents(db)}
    assert (done["logged"], done["skipped"]) == (30 - len(finished), len(finished))
    active = active_runs(db)
    assert active == {
        rid: "FINISHED" for rid in [*done["runs"]["heart_rate"].values(), *done["parents"]["heart_rate"].values()]
    }
    if orphans:
        assert f"ended KILLED {len(orphans)} runs left RUNNING by a killed track" in out.stderr


def test_a_hard_killed_train_leaves_a_temporary_the_next_train_removes(small_root, tmp_path):
    root, env = make_project(tmp_path, small_root, TRAIN_PARAMS)
    t = Terminal(initlab("train", "heart_rate"), root, env)
    parent = root / "pipeline" / "train"
    t.wait_for(lambda: list(parent.glob(".heart_rate.*.tmp")), "training's temporary output folder")
    t.proc.kill()
    assert t.finish() == -signal.SIGKILL
    assert list(parent.glob(".heart_rate.*.tmp"))
    stage(root, env, "train", "heart_rate")
    assert sorted(p.name for p in parent.iterdir()) == ["heart_rate"]


def test_ctrl_c_while_waiting_for_a_silent_server_stops_track_within_seconds(evaluated, tmp_path):
    import socket

    root = tmp_path / "project"
    shutil.copytree(evaluated, root)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()  # connections complete; nobody answers
        env = {**project_env(root), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{sock.getsockname()[1]}"}
        t = Terminal(initlab("track", "heart_rate"), root, env)
        sock.settimeout(TIMEOUT)
        conn, _ = sock.accept()  # track has connected and sent its request
        t0 = time.monotonic()
        t.proc.send_signal(signal.SIGINT)
        code = t.finish()
        # well inside the store's 10 s timeout; not under 1 s since track checks its inputs with
        # torch before contacting the store, and a process with torch loaded takes ~1 s to exit
        assert time.monotonic() - t0 < 3.0
        conn.close()
    assert code == 130, t.stderr
    assert messages(t.stderr) == ["initlab: interrupted; no output was written"], t.stderr


# --------------------------------------------------------------------------- concurrency


def test_two_tracks_at_once_on_one_new_sqlite_store(small_root, tmp_path):
    """`track line` and `track circles` from two projects, one MLflow store that does not exist yet.

    Both processes find an empty store and, unguarded, both run MLflow's schema migrations: one
    fails ("table ... already exists", "duplicate column name", "Online migration expected ...").
    """
    db = tmp_path / "shared" / "mlflow.db"
    projects = {}
    for study in ("line", "circles"):
        p = tiny_params(study, epochs=5)
        p["studies"][study]["train"]["seeds"] = [0, 1]
        root, env = make_project(tmp_path / study, small_root, p)
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
        stage(root, env, "train", study)
        stage(root, env, "evaluate", study)
        projects[study] = (root, env)
    assert not db.exists()
    procs = {
        study: subprocess.Popen(
            initlab("track", study), cwd=root, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for study, (root, env) in projects.items()
    }
    for study, proc in procs.items():
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"{study}:\n{err}"
        assert "locked" not in err and "Traceback" not in err, f"{study}:\n{err}"
    status, keys = dict(runs(db)), metric_keys(db)
    ids = {study: tracked(root)["runs"][study] for study, (root, _) in projects.items()}
    assert len(ids["line"]) == 2 and len(ids["circles"]) == 4  # seeds x normalisations
    assert len(status) == 6 + 3 and set(status.values()) == {"FINISHED"}  # and a parent per variant
    for study_ids in ids.values():
        for rid in study_ids.values():
            assert status[rid] == "FINISHED"
            assert {
                "train_loss",
                "val_accuracy",
                "val_loss",
                "train_loss_step",
                "test_accuracy",
                "test_loss",
            } <= keys[rid]


def test_three_tracks_of_one_study_at_once_log_each_model_once(small_root, tmp_path):
    """`track line` three times at once in one project, on a new store: one logs the runs, the
    others find them there. Each builds a store aside and links it into place; none may replace
    the one linked first (one that did swapped the file under the first's open connections:
    "database disk image is malformed", "No Experiment with id=1 exists")."""
    import sqlite3

    p = tiny_params("line", epochs=5)
    p["studies"]["line"]["train"]["seeds"] = [0, 1, 2]
    root, env = make_project(tmp_path, small_root, p)
    stage(root, env, "train", "line")
    stage(root, env, "evaluate", "line")
    procs = [
        subprocess.Popen(
            initlab("track", "line"), cwd=root, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        assert "locked" not in err and "Traceback" not in err, err
    con = sqlite3.connect(root / "mlflow.db")
    assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    con.close()
    status = dict(runs(root / "mlflow.db"))
    assert len(status) == 3 + 1 and set(status.values()) == {"FINISHED"}  # 3 seeds and their variant, once
    done = tracked(root)
    assert sorted([*done["runs"]["line"].values(), *done["parents"]["line"].values()]) == sorted(status)
