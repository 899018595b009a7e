"""A team's tracking server: MLflow's own server, with its basic-auth app, on a PostgreSQL store.

``initlab server start`` (``make server``) starts, under ``<root>`` (``.server/`` in the project,
git-ignored):

- ``postgres/``: a PostgreSQL cluster (Debian's ``postgresql`` package: ``initdb`` on the first
  start, ``pg_ctl`` after). It listens on a Unix socket in that folder only, no TCP port, so only
  this machine's root and the cluster's owner reach it; it holds MLflow's store (database
  ``mlflow``) and the auth app's users (``mlflow_auth``).
- ``mlflow server --app-name basic-auth`` on ``127.0.0.1:<port>``, serving the runs' artifacts
  from ``artifacts/`` (``--serve-artifacts``). Its log is ``mlflow.log``, its pid ``mlflow.pid``.

The login comes from the environment, never from a file in git: ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD``, the variables MLflow's client sends. The first start makes that user
the server's admin (``MLFLOW_AUTH_ADMIN_PASSWORD``, given to the server process only); a request
without them is refused (401). ``initlab server stop`` (``make server-stop``) ends both.

Every wait is bounded: the server's ``/health`` within ``timeout`` seconds, PostgreSQL's start and
stop by ``pg_ctl -t``, a server that does not stop on SIGTERM is killed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from initlab.errors import ParamsError, StoreError

USER_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
PG_OS_USER = "postgres"  # the account Debian's package makes; PostgreSQL refuses to run as root
DATABASES = ("mlflow", "mlflow_auth")


@dataclass(frozen=True)
class Server:
    root: Path
    port: int = 5001
    pg_port: int = 54329  # names the socket file only: PostgreSQL listens on no TCP port

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgdata(self) -> Path:
        return self.root / "postgres"

    def db_uri(self, db: str) -> str:
        return f"postgresql+psycopg://{PG_OS_USER}@/{db}?host={self.pgdata.resolve()}&port={self.pg_port}"

    @property
    def pidfile(self) -> Path:
        return self.root / "mlflow.pid"

    @property
    def log(self) -> Path:
        return self.root / "mlflow.log"


def credentials() -> tuple[str, str]:
    """The login from the environment, or one line saying which variable is missing."""
    user, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")
    missing = [name for name, value in ((USER_ENV, user), (PASSWORD_ENV, password)) if not value]
    if missing:
        raise ParamsError(
            f"{' and '.join(missing)} not set: the server's login comes from the environment "
            f"(export {USER_ENV}=<name> {PASSWORD_ENV}=<password>; never put them in a file in git)"
        )
    if len(password) < 8:
        raise ParamsError(f"{PASSWORD_ENV} has {len(password)} characters; MLflow's auth app needs at least 8")
    return user, password


def pg_program(name: str) -> str:
    """PostgreSQL's server program ``name``: on PATH, else the newest in Debian's folder."""
    debian = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    found = shutil.which(name) or (debian[-1] if debian else None)
    if not found:
        raise StoreError(
            f"PostgreSQL's {name} not found (on PATH or in /usr/lib/postgresql/*/bin); "
            "install the server: `make postgres` (apt-get install postgresql)"
        )
    return found


def _pg(cmd: list[str], cwd: Path, what: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program as the cluster's owner (``postgres`` when we are root: PostgreSQL
    refuses to run as root; else ourselves) in ``cwd``; with ``check``, a failure is one line."""
    owner = {"user": PG_OS_USER, "group": PG_OS_USER} if os.geteuid() == 0 else {}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, **owner)
    except subprocess.TimeoutExpired:
        raise StoreError(f"{what}: no answer after {timeout:g} s ({' '.join(cmd[:2])} ...)") from None
    except (OSError, KeyError) as exc:  # no such program or account, a folder it cannot enter
        raise StoreError(f"{what}: {type(exc).__name__}: {exc}") from None
    if check and out.returncode != 0:
        last = (out.stderr.strip() or out.stdout.strip() or f"exit {out.returncode}").splitlines()[-1]
        raise StoreError(f"{what} failed: {last[:300]}")
    return out


def pg_running(s: Server) -> bool:
    if not (s.pgdata / "PG_VERSION").exists():
        return False
    data = s.pgdata.resolve()
    status = _pg([pg_program("pg_ctl"), "status", "-D", str(data)], data, "pg_ctl status", 30, check=False)
    return status.returncode == 0


def start_postgres(s: Server, timeout: float = 60) -> None:
    """Make the cluster on the first start, start it, and create MLflow's databases."""
    data = s.pgdata.resolve()
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, PG_OS_USER, PG_OS_USER)
            if _pg(["test", "-w", str(data)], Path("/"), "test -w", 30, check=False).returncode != 0:
                raise StoreError(
                    f"{data}: the {PG_OS_USER} account cannot write here (a folder above it is "
                    "closed to others); put the server elsewhere with --root"
                )
        _pg(
            [
                pg_program("initdb"),
                "-D",
                str(data),
                "-U",
                PG_OS_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            data,
            "initdb",
            timeout,
        )
    if not pg_running(s):
        opts = f"-c listen_addresses='' -c unix_socket_directories='{data}' -p {s.pg_port}"
        _pg(
            [
                pg_program("pg_ctl"),
                "start",
                "-D",
                str(data),
                "-w",
                "-t",
                str(int(timeout)),
                "-l",
                str(data / "postgres.log"),
                "-o",
                opts,
            ],
            data,
            f"PostgreSQL in {data} (its log: {data / 'postgres.log'})",
            timeout + 10,
        )
    import psycopg

    with psycopg.connect(
        host=str(data),
        port=s.pg_port,
        user=PG_OS_USER,
        dbname="postgres",
        autocommit=True,
        connect_timeout=int(timeout),
    ) as con:
        have = {r[0] for r in con.execute("SELECT datname FROM pg_database")}
        for db in DATABASES:
            if db not in have:
                con.execute(f'CREATE DATABASE "{db}"')


def stop_postgres(s: Server, timeout: float = 60) -> bool:
    if not pg_running(s):
        return False
    data = s.pgdata.resolve()
    _pg(
        [pg_program("pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w", "-t", str(int(timeout))],
        data,
        "stopping PostgreSQL",
        timeout + 10,
    )
    return True


def server_pid(s: Server) -> int | None:
    """The running server's pid (its process group), or None: also when the pid file's process
    is gone or is another program now (a reused pid is never signalled)."""
    try:
        pid = int(s.pidfile.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"mlflow" in cmdline and b"server" in cmdline else None


def healthy(s: Server, timeout: float = 2) -> bool:
    import requests

    try:
        return requests.get(f"{s.uri}/health", timeout=timeout).ok
    except requests.RequestException:
        return False


def write_auth_config(s: Server, user: str) -> Path:
    """The auth app's settings (no password in it): its users' database and the admin's name."""
    ini = s.root / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {s.db_uri('mlflow_auth')}\n"
        f"admin_username = {user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # A login is checked once a minute per worker, not on each request: the password
        # hash (PBKDF2) on every one of a track's ~13 requests per run kept the server busy.
        "auth_cache_ttl_seconds = 60\n"
    )
    return ini


def start_mlflow(s: Server, timeout: float = 120) -> int:
    """Start ``mlflow server`` in its own process group; return its pid once ``/health`` answers."""
    user, password = credentials()
    (s.root / "artifacts").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_config(s, user).resolve()),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
    }
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        s.db_uri("mlflow"),
        "--serve-artifacts",
        "--artifacts-destination",
        str((s.root / "artifacts").resolve()),
        "--host",
        "127.0.0.1",
        "--port",
        str(s.port),
        "--workers",
        "2",
    ]
    with open(s.log, "ab") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    s.pidfile.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while not healthy(s):
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited {proc.returncode}" if proc.poll() is not None else f"no /health after {timeout:g} s"
            _end_group(proc.pid)
            s.pidfile.unlink(missing_ok=True)
            tail = [ln for ln in s.log.read_text(errors="replace").splitlines() if ln.strip()][-1:] or [""]
            raise StoreError(f"mlflow server on {s.uri} {why}; its log {s.log} ends: {tail[0][:300]}")
        time.sleep(0.25)
    return proc.pid


def _end_group(pid: int, timeout: float = 20) -> None:
    """SIGTERM to the process group ``pid`` leads; SIGKILL after ``timeout`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            with contextlib.suppress(ChildProcessError):  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)


def start(s: Server, timeout: float = 120) -> dict:
    """PostgreSQL, then MLflow's server; a no-op for what already runs. Returns what runs."""
    credentials()  # before anything starts
    s.root.mkdir(parents=True, exist_ok=True)
    start_postgres(s)
    pid = server_pid(s)
    if pid is None or not healthy(s):
        if pid is not None:
            _end_group(pid)
        pid = start_mlflow(s, timeout)
    return {"uri": s.uri, "pid": pid, "store": s.db_uri("mlflow"), "artifacts": str(s.root / "artifacts")}


def stop(s: Server, postgres: bool = True) -> list[str]:
    """End MLflow's server, then (with ``postgres``) PostgreSQL; return what was stopped."""
    stopped = []
    pid = server_pid(s)
    if pid is not None:
        _end_group(pid)
        stopped.append(f"mlflow server (pid {pid})")
    s.pidfile.unlink(missing_ok=True)
    if postgres and stop_postgres(s):
        stopped.append("PostgreSQL")
    return stopped
