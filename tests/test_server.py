"""A team's tracking server: MLflow's server with its basic-auth app on a real PostgreSQL, on loopback.

The slow test starts both (``initlab server start``, what ``make server`` runs), runs two pipelines
at once against it (two projects, two studies: train, evaluate, track), stops the server in the
middle of a third project's ``initlab track``, and starts it again: the stage failed within a bound
with one line naming the URI, and the next ``track`` ends the runs left RUNNING and logs exactly
the missing ones. PostgreSQL's server programs come from Debian's package (``make postgres``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from initlab.cli import app
from initlab.tracking.server import Server, credentials, pg_program
from test_processes import (
    TRACK_PARAMS,
    Terminal,
    initlab,
    make_project,
    messages,
    tiny_params,
    tracked,
)

runner = CliRunner()
TIMEOUT = 300


def test_the_server_wants_its_login_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "long-enough")
    result = runner.invoke(app, ["server", "start", "--root", str(tmp_path / "srv")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "MLFLOW_TRACKING_USERNAME not set: the server's login comes from the environment" in result.output
    assert not (tmp_path / "srv").exists()  # nothing started, nothing made
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "short")
    with pytest.raises(Exception, match="MLFLOW_TRACKING_PASSWORD has 5 characters"):
        credentials()


def test_the_stores_uri_is_a_unix_socket_in_the_servers_folder(tmp_path):
    s = Server(tmp_path, port=5123, pg_port=6000)
    assert s.uri == "http://127.0.0.1:5123"
    assert s.db_uri("mlflow") == f"postgresql+psycopg://postgres@/mlflow?host={tmp_path / 'postgres'}&port=6000"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_counts(study: str) -> dict[str, int]:
    from mlflow.tracking import MlflowClient

    cl = MlflowClient()
    exp = cl.get_experiment_by_name(f"initlab-{study}")
    if exp is None:
        return {}
    out: dict[str, int] = {}
    for run in cl.search_runs([exp.experiment_id], max_results=10_000):
        out[run.info.status] = out.get(run.info.status, 0) + 1
    return out


@pytest.mark.slow
def test_two_pipelines_at_once_then_the_server_stops_mid_track_and_the_next_track_logs_the_rest(
    small_root, tmp_path, monkeypatch
):
    pg_program("pg_ctl")  # PostgreSQL installed (`make postgres`), or one line saying how
    # The cluster's folder must be reachable by the postgres account: pytest's tmp is not (0700).
    root = Path(tempfile.mkdtemp(prefix="initlab-server-"))
    root.chmod(0o755)
    port = free_port()
    s = Server(root / "srv", port=port, pg_port=free_port())
    uri = s.uri
    login = {"MLFLOW_TRACKING_USERNAME": "initlab-test", "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(12)}
    for k, v in login.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    server_cmd = ["server", "--root", str(s.root), "--port", str(port), "--pg-port", str(s.pg_port)]

    def server(action: str, *extra: str) -> None:
        args = server_cmd[:1] + [action] + server_cmd[1:] + list(extra)
        out = subprocess.run(
            initlab(*args), capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, **login}
        )
        assert out.returncode == 0, out.stderr

    try:
        server("start")
        # Login required: no credentials, no runs.
        search = f"{uri}/api/2.0/mlflow/experiments/search"
        assert requests.get(search, params={"max_results": 1}, timeout=10).status_code == 401
        assert (
            requests.get(search, params={"max_results": 1}, timeout=10, auth=tuple(login.values())).status_code
            == 200
        )

        # Two pipelines at once, two projects and studies, one server.
        projects = {}
        for study in ("line", "circles"):
            proot, env = make_project(tmp_path / study, small_root, tiny_params(study, epochs=20))
            env = {**env, **login, "MLFLOW_TRACKING_URI": uri}
            chain = " && ".join(" ".join(initlab(c, study)) for c in ("train", "evaluate", "track"))
            projects[study] = (
                proot,
                env,
                subprocess.Popen(
                    chain,
                    shell=True,
                    cwd=proot,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        for study, (proot, _, proc) in projects.items():
            _, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, err
            done = tracked(proot)
            n_runs = sum(len(r) for r in done["runs"].values())
            n_parents = sum(len(r) for r in done["parents"].values())
            assert done["logged"] == n_runs > 0
            assert status_counts(study) == {"FINISHED": n_runs + n_parents}  # each once
        # A model on the server loads in another process, with the login from the environment.
        run_id = next(iter(tracked(projects["line"][0])["runs"]["line"].values()))
        load = (
            f"import mlflow.pytorch, torch; m = mlflow.pytorch.load_model('runs:/{run_id}/model'); "
            "print(tuple(m(torch.zeros(2, 1)).shape))"
        )
        out = subprocess.run(
            [sys.executable, "-c", load],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env={**os.environ, **login, "MLFLOW_TRACKING_URI": uri},
        )
        assert out.returncode == 0 and out.stdout.strip() == "(2, 1)", out.stderr

        # A third project's track, 30 runs: the server stops once some are logged.
        proot, env = make_project(tmp_path / "third", small_root, TRACK_PARAMS)
        env = {**env, **login, "MLFLOW_TRACKING_URI": uri}
        for stage in ("train", "evaluate"):
            subprocess.run(
                initlab(stage, "heart_rate"), cwd=proot, env=env, check=True, capture_output=True, timeout=TIMEOUT
            )
        assert status_counts("heart_rate") == {}
        t = Terminal(initlab("track", "heart_rate"), proot, env)
        t.wait_for(lambda: status_counts("heart_rate").get("FINISHED", 0) >= 6, "six runs logged")
        t0 = time.monotonic()
        server("stop", "--no-postgres")
        code = t.finish()
        failed_in = time.monotonic() - t0
        said = messages(t.stderr)
        assert code == 1 and failed_in < 60, (code, failed_in, t.stderr)
        assert len(said) == 1 and said[0].startswith(f"initlab: error: MLFLOW_TRACKING_URI={uri}: "), said
        assert "Traceback" not in t.stderr

        server("start")
        left = status_counts("heart_rate")  # what the stop left: some FINISHED, the runs it cut RUNNING
        assert left.get("RUNNING", 0) >= 1, left
        out = subprocess.run(
            initlab("track", "heart_rate"), cwd=proot, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
        assert out.returncode == 0, out.stderr
        done = tracked(proot)
        after = status_counts("heart_rate")
        # 30 seeds and their 3 variants, each once: the runs the stop cut were ended KILLED, then
        # deleted as litter (a variant's parent is reused), so no KILLED twin is left beside them
        assert after == {"FINISHED": 33}, after
        assert done["orphans"] == left["RUNNING"]
        # exactly the missing seeds are logged: those FINISHED before the stop are kept
        assert done["logged"] + done["skipped"] == 30 and done["logged"] >= 1
        assert left["FINISHED"] - 3 <= done["skipped"] <= left["FINISHED"]
    finally:
        subprocess.run(initlab(*server_cmd[:1], "stop", *server_cmd[1:]), capture_output=True, timeout=TIMEOUT)
        shutil.rmtree(root, ignore_errors=True)


def test_a_stale_pid_file_never_signals_another_program(tmp_path):
    from initlab.tracking.server import server_pid

    s = Server(tmp_path)
    assert server_pid(s) is None  # no pid file
    s.pidfile.write_text(str(os.getpid()))  # a live process that is not MLflow's server (pytest)
    assert server_pid(s) is None
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "mlflow", "server"])
    try:
        s.pidfile.write_text(str(sleeper.pid))
        deadline = time.monotonic() + 10  # until the child has exec'd (its cmdline is pytest's before)
        while b"server" not in Path(f"/proc/{sleeper.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server_pid(s) == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
