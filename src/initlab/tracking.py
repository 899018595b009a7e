"""MLflow tracking: one experiment per study, one run per trained model, logged by one process.

The train and evaluate stages never touch MLflow: importing it and opening the store cost seconds
per process. ``initlab track`` (the DVC stage ``track``) reads what they wrote
(``pipeline/train/<study>/`` and ``pipeline/evaluate/<study>.csv``) and logs each trained model as
one run: tags, params, curves strided to ``tracking.max_points_per_metric`` points, final train
and validation metrics and the test metrics together in one ``log_batch``, and the model.

Logging is idempotent. Each run is tagged ``initlab.run_key``, a SHA-256 of what the run shows
(study, run name, the weight file, the run's row of the evaluate table but its timings, its
curves, the logged params and tracking settings); a study's FINISHED runs are fetched once, and a
model whose key is there is not logged again: a model trained again to the same weights and
metrics keeps its run. A FAILED or KILLED attempt does not count, so it is logged again.

The store is ``sqlite:///mlflow.db`` in the project root unless ``MLFLOW_TRACKING_URI`` names
another. Runs are opened with a context that ends them FAILED on any error and KILLED on Ctrl-C or
SIGTERM, so no run is ever left RUNNING. Two pipelines may log to one SQLite store at once:
``initlab.store`` creates a new store in one process and holds signals during a run's creation
and end; WAL mode and a busy timeout let their writes wait for each other.

A run costs three store calls: ``create_run`` (with its tags), one ``log_batch`` (params,
metrics) and ``set_terminated``; its model is saved straight into the run's local artifact folder
(``log_artifacts`` for a remote one); a study costs one ``search_runs`` (paged). On SQLite the
per-row ORM work of ``log_batch`` is what remains; the full curves are in
``pipeline/train/<study>/curves.npz``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from initlab.config import Params, ParamsError, Paths
from initlab.signals import Terminated, raise_if_interrupted, sigterm_raises  # noqa: F401 (re-exported)
from initlab.store import StoreError, deferred_signals, open_client, store_lock

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch call
RUN_KEY_TAG = "initlab.run_key"
SEARCH_PAGE = 10_000  # runs per search_runs page (MLflow's SQL store allows up to 50,000)
# Columns of runs.csv / the evaluate table that say which model a row is; the others are metrics.
IDENTITY = ("run_name", "variant", "init", "loss", "normalize", "lr", "seed", "reproduce", "arch",
            "mlflow_run_id")  # fmt: skip


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


_PRAGMAS_SET = False


def _sqlite_wal() -> None:
    """Open every SQLite connection in WAL mode with ``synchronous=NORMAL`` and a busy timeout.

    MLflow commits several times per call; with SQLite's default rollback journal each commit
    is an fsync (about 5 ms here, 9 commits per logged model). WAL commits without one, lets the
    MLflow UI read while a pipeline writes, and with ``busy_timeout`` a second pipeline waits
    for the lock instead of failing with "database is locked". The hook is SQLAlchemy's
    documented per-connection PRAGMA recipe; it touches SQLite connections only.
    """
    global _PRAGMAS_SET
    if _PRAGMAS_SET:
        return
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_connection, connection_record):
        if isinstance(dbapi_connection, sqlite3.Connection):
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA busy_timeout = 60000")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.close()

    _PRAGMAS_SET = True


def client():
    import mlflow

    _sqlite_wal()
    mlflow.set_tracking_uri(tracking_uri())
    return open_client(tracking_uri())


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment_id(cl, study: str) -> str:
    name = f"initlab-{study}"
    with store_lock(tracking_uri()):  # no other initlab process creates it between our two calls
        exp = cl.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return cl.create_experiment(name)
        except Exception:  # created by a process that does not take the lock
            return cl.get_experiment_by_name(name).experiment_id


def end_run(cl, run_id: str, status: str) -> None:
    """Set the run's final status; a signal arriving meanwhile is delivered once it is written."""
    import mlflow

    with deferred_signals():
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            # Left open in the fluent API (a signal between start_run and its `with`): end it
            # there too, or MLflow's exit hook would later mark it FINISHED.
            mlflow.end_run(status)
        cl.set_terminated(run_id, status)


@contextlib.contextmanager
def run_guard(cl, run_id: str) -> Iterator[None]:
    """End ``run_id`` FINISHED on success, KILLED on interruption, FAILED on any other error."""
    try:
        yield
    except KeyboardInterrupt:
        end_run(cl, run_id, "KILLED")
        raise
    except BaseException:
        end_run(cl, run_id, "FAILED")
        raise
    end_run(cl, run_id, "FINISHED")


@contextlib.contextmanager
def new_run(cl, experiment: str, **kwargs) -> Iterator[str]:
    """``cl.create_run(experiment, **kwargs)`` inside ``run_guard``; yields the run id.

    Signals are held from the run's creation until the guard is in place, so no interruption
    leaves a run that nobody ends.
    """
    with contextlib.ExitStack() as stack:
        with deferred_signals():
            run_id = cl.create_run(experiment, **kwargs).info.run_id
            stack.enter_context(run_guard(cl, run_id))
        yield run_id  # a signal held above was raised as its `with` ended: inside the guard


def series(key: str, values: np.ndarray, steps: np.ndarray, max_points: int):
    """Metric objects for a curve, strided so that at most ``max_points`` are logged."""
    from mlflow.entities import Metric

    stride = max(1, int(np.ceil(len(values) / max_points)))
    now = int(time.time() * 1000)
    return [
        Metric(key, float(v), now, int(s))
        for v, s in zip(values[::stride], steps[::stride])
        if np.isfinite(v)
    ]


def log_metrics(cl, run_id: str, metrics: list, params: list | None = None) -> None:
    """``log_batch`` in chunks of MLflow's limit (1000 entries, of which at most 100 params)."""
    params = list(params or [])
    metrics = list(metrics)
    while params or metrics:
        p, params = params[:100], params[100:]
        m, metrics = metrics[: MAX_BATCH - len(p)], metrics[MAX_BATCH - len(p) :]
        cl.log_batch(run_id, metrics=m, params=p, synchronous=True)


def model_signature(arch: dict):
    """The model's input/output schema, given rather than inferred from an example."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def spec(n: int) -> Schema:
        return Schema([TensorSpec(np.dtype(np.float32), (-1, n))])

    return ModelSignature(inputs=spec(arch["sizes"][0]), outputs=spec(arch["sizes"][-1]))


def local_dir(uri: str) -> Path | None:
    """The folder of a local artifact URI (a path or ``file:``); None for remote stores."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(unquote(parsed.path))
    return Path(uri) if parsed.scheme == "" else None


def log_model(cl, run_id: str, module, arch: dict, requirements: list[str],
              artifact_uri: str | None = None) -> None:  # fmt: skip
    """The model in MLflow's pytorch format, as the run's ``model`` artifact.

    ``mlflow.pytorch.load_model("runs:/<run_id>/model")`` loads it, and the UI can register
    it. It is saved with ``save_model``, not ``log_model``: that also creates and finalises a
    LoggedModel entity, three more store transactions per run, and the pt2 export traces the
    graph; together 10x the cost. Where the run's artifacts are a local folder (the default) it
    is saved there directly, which is all ``log_artifacts`` would do after saving it to a
    temporary folder; otherwise it is saved to one and uploaded with ``log_artifacts``.
    """
    import tempfile

    local = local_dir(artifact_uri or cl.get_run(run_id).info.artifact_uri)
    if local is not None:
        save_model(module, str(local / "model"), arch, requirements)
        return
    with tempfile.TemporaryDirectory(prefix="initlab-model-") as tmp:
        save_model(module, f"{tmp}/model", arch, requirements)
        cl.log_artifacts(run_id, f"{tmp}/model", "model")


def save_model(module, path: str, arch: dict, requirements: list[str]) -> None:
    """``mlflow.pytorch.save_model`` with the signature and requirements given, not inferred."""
    import mlflow.pytorch

    mlflow.pytorch.save_model(module, path, serialization_format="pickle",
                              signature=model_signature(arch), pip_requirements=requirements)  # fmt: skip


def _flat_params(prefix: str, obj) -> dict[str, str]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat_params(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: str(obj)[:6000]}


@dataclass(frozen=True)
class TrainedRun:
    """One trained model as the train and evaluate stages left it: everything its run logs."""

    study: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # final train/validation metrics and test metrics
    curves: dict[str, np.ndarray]  # step_loss, val_loss, val_acc
    arch: dict
    weights: Path
    key: str  # RUN_KEY_TAG: equal keys, equal runs


def _is_metric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _same_rows(a, b) -> bool:
    """Whether two tables hold the same rows in their shared columns (floats to 1e-12)."""
    import pandas as pd

    if list(a["run_name"]) != list(b["run_name"]):
        return False
    for col in (set(a.columns) & set(b.columns)) - {"arch"}:
        x, y = a[col], b[col]
        if pd.api.types.is_float_dtype(x) and pd.api.types.is_float_dtype(y):
            if not np.allclose(x.to_numpy(), y.to_numpy(), rtol=1e-12, atol=0, equal_nan=True):
                return False
        elif list(x.astype(str)) != list(y.astype(str)):
            return False
    return True


def run_key(study: str, run_name: str, weights: bytes, row: dict, curves: dict[str, np.ndarray],
            logged: dict) -> str:  # fmt: skip
    """SHA-256 of what a run shows: a run with this key in the store needs no logging again."""
    h = hashlib.sha256()
    h.update(json.dumps([study, run_name, row, logged], sort_keys=True, default=str).encode())
    h.update(hashlib.sha256(weights).digest())
    for name in sorted(curves):
        a = np.ascontiguousarray(curves[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def trained_runs(params: Params, study: str, paths: Paths) -> list[TrainedRun]:
    """Read and check the train and evaluate stages' outputs of ``study``; no MLflow here.

    A missing or stale input is a ``ParamsError`` (one line, exit 2) that names the file and
    the stage to run, raised before the store is opened.
    """

    from initlab.io import read_csv, read_npz

    fix = f"run `dvc repro evaluate@{study}` first"
    folder, table = paths.trained(study), paths.evaluated(study)
    for need in (folder / "runs.csv", folder / "curves.npz", table):
        if not need.exists():
            raise ParamsError(f"{need} missing; {fix}")
    runs = read_csv(folder / "runs.csv", ("run_name", "arch"))
    evaluated = read_csv(table, ("run_name", "init", "loss", "normalize", "lr", "seed", "reproduce", "diverged"))
    if not _same_rows(runs, evaluated):
        raise ParamsError(f"{table} does not match {folder / 'runs.csv'} (trained again since it "
                          f"was evaluated); {fix}")  # fmt: skip
    curves = read_npz(folder / "curves.npz")
    # Training times are no stage output (they differ between two trainings of the same weights):
    # logged when the timings file is there, never part of the run key.
    timing = paths.timing(f"train-{study}")
    seconds = json.loads(timing.read_text()).get("run_seconds", {}) if timing.exists() else {}
    sp = params.study(study)
    st = sp.train
    common = _flat_params("", {"train": st.model_dump(exclude={"inits", "losses", "normalize",
                                                               "lr", "seeds", "reproduce"})})
    settings = params.tracking.model_dump()
    out = []
    for row, arch_json in zip(evaluated.to_dict("records"), runs["arch"]):
        name, init = str(row["run_name"]), str(row["init"])
        weights = folder / "weights" / f"{name}.pt"
        mine = {k.split("/", 1)[1]: curves[k] for k in curves if k.startswith(f"{name}/")}
        if not weights.exists() or set(mine) != {"step_loss", "val_loss", "val_acc"}:
            raise ParamsError(f"{weights if not weights.exists() else folder / 'curves.npz'}: "
                              f"no weights or curves of {name}; {fix}")  # fmt: skip
        if init not in sp.inits:
            raise ParamsError(f"{folder / 'runs.csv'}: init {init!r} of {name} is not in the params' "
                              f"inits (trained with other params); {fix}")  # fmt: skip
        arch = json.loads(arch_json)
        lr, reproduce = float(row["lr"]), bool(row["reproduce"])
        tags = {"study": study, "init": init, "loss": row["loss"], "normalize": row["normalize"],
                "seed": str(row["seed"]), "lr": f"{lr:g}", "variant": row["variant"],
                "reproduce": str(reproduce).lower(),
                "diverged": str(bool(row["diverged"])).lower()}  # fmt: skip
        p = {**common, "init": init, "loss": row["loss"], "normalize": row["normalize"],
             "lr": f"{lr:g}", "seed": str(row["seed"]), "reproduce": str(reproduce),
             **_flat_params("init_spec", sp.inits[init].model_dump()),
             **_flat_params("arch", arch)}  # fmt: skip
        metrics = {k: float(v) for k, v in row.items() if k not in IDENTITY and _is_metric(v)}
        key = run_key(study, name, weights.read_bytes(), row, mine,
                      {"tags": tags, "params": p, "tracking": settings})  # fmt: skip
        if isinstance(seconds.get(name), float) and math.isfinite(seconds[name]):
            metrics["train_seconds"] = seconds[name]
        out.append(TrainedRun(study, name, tags, p, metrics, mine, arch, weights, key))
    return out


def finished_keys(cl, experiment: str) -> dict[str, str]:
    """``initlab.run_key`` -> run id of the FINISHED runs of ``experiment`` (the latest of equals)."""
    keys: dict[str, str] = {}
    token = None
    while True:
        page = cl.search_runs([experiment], filter_string="attributes.status = 'FINISHED'",
                              max_results=SEARCH_PAGE, order_by=["attributes.start_time DESC"],
                              page_token=token)  # fmt: skip
        for run in page:
            key = run.data.tags.get(RUN_KEY_TAG)
            if key:
                keys.setdefault(key, run.info.run_id)
        token = page.token
        if not token:
            return keys


def load_module(weights: Path | str, arch: dict, cache: dict):
    """A model from its saved state_dict, in a module built once per architecture."""
    from initlab.io import load_weights
    from initlab.models import build_module

    shape = json.dumps(arch, sort_keys=True)
    if shape not in cache:
        cache[shape] = build_module(**arch)  # initialises weights: ~10 ms for Fashion-MNIST's
    module = cache[shape]
    module.load_state_dict(load_weights(Path(weights)))
    return module


def run_contents(r: TrainedRun, commit: str, max_points: int) -> tuple[dict, list, list]:
    """``r``'s tags, metrics (curves strided to ``max_points``, final, test) and params."""
    from mlflow.entities import Metric, Param

    tags = {**r.tags, "git_commit": commit, RUN_KEY_TAG: r.key}
    steps = np.arange(len(r.curves["step_loss"]))
    epochs = np.arange(len(r.curves["val_loss"]))
    now = int(time.time() * 1000)
    metrics = (
        series("train_loss_step", r.curves["step_loss"], steps, max_points)
        + series("val_loss", r.curves["val_loss"], epochs, max_points)
        + series("val_accuracy_epoch", r.curves["val_acc"], epochs, max_points)
        + [Metric(k, v, now, 0) for k, v in r.metrics.items()]
    )
    return tags, metrics, [Param(k, v) for k, v in r.params.items()]


class _Once(logging.Filter):
    """Pass each distinct message once: MLflow repeats its pickle warning for every model saved."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg in self.seen:
            return False
        self.seen.add(msg)
        return True


def _warn_once(logger: str) -> None:
    log = logging.getLogger(logger)
    if not any(isinstance(f, _Once) for f in log.filters):
        log.addFilter(_Once())


def _model_requirements() -> list[str]:
    import torch

    _warn_once("mlflow.pytorch")
    return [f"torch=={torch.__version__.split('+')[0]}"]


# Models are saved by a second process when at least this many runs may need logging: it pays
# ~3 s of start-up (Python, torch, mlflow), overlapped with this process's own.
SAVER_MIN_RUNS = 24


def _saver_wanted(params: Params, processes: int | None) -> bool:
    """Whether models go to a ``_Saver``: ``tracking.log_models`` on and two cores or more."""
    return params.tracking.log_models and (processes or min(2, os.cpu_count() or 1)) > 1


@contextlib.contextmanager
def model_saver(params: Params, processes: int | None = None) -> Iterator[_Saver | None]:
    """A ``_Saver`` started now, for ``log_studies``; None where models are saved in this process
    (``tracking.log_models`` off, or one core). Stopped when the block ends, whatever happens.

    Started before the runs are read, its imports (~3 s of torch and MLflow) overlap this
    process's reading of the runs as well as its opening of the store.
    """
    saver = _Saver() if _saver_wanted(params, processes) else None
    try:
        yield saver
    finally:
        if saver is not None:
            saver.stop()


def log_studies(params: Params, studies: dict[str, list[TrainedRun]],
                progress: bool | None = None, processes: int | None = None,
                saver: _Saver | None = None) -> dict:  # fmt: skip
    """Log every run of ``studies`` not already FINISHED in its study's experiment.

    With two or more cores, ``SAVER_MIN_RUNS`` runs or more and a local artifact store, the two
    halves of a run's cost go to two processes: this one writes the store (create the run, one
    ``log_batch``, end it: ~35 ms of SQLAlchemy ORM work), while ``_Saver``, a process started
    first so its imports overlap this one's, loads each model's weights and saves it in MLflow's
    pytorch format into the run's artifact folder (~17 ms of torch and YAML). A run is ended
    FINISHED once its model is saved. Only this process touches SQLite: two writers would queue
    on its lock. Ctrl-C, SIGTERM or an error ends every open run KILLED or FAILED and stops the
    saver. Otherwise (one core, few runs, a remote artifact store) each run is logged whole here.

    ``saver``, from ``model_saver``, is used and stopped here instead of starting one.

    Returns ``{"runs": {study: {run_name: run_id}}, "logged": n, "skipped": k}``; a skipped run's
    id is the one already in the store.
    """
    from tqdm.auto import tqdm

    total = sum(len(rs) for rs in studies.values())
    log_models, max_points = params.tracking.log_models, params.tracking.max_points_per_metric
    if saver is None and _saver_wanted(params, processes) and total >= SAVER_MIN_RUNS:
        saver = _Saver()
    waiting: dict[int, str] = {}  # runs RUNNING until the saver has saved their model
    cl = None
    status = "FAILED"
    try:
        cl = client()
        commit = git_commit()
        out: dict = {"runs": {}, "logged": 0, "skipped": 0}
        todo: list[tuple[str, str, TrainedRun]] = []
        with contextlib.ExitStack() as locks, tqdm(
            total=total, desc=f"track {next(iter(studies), '')}", unit="run",
            disable=None if progress is None else not progress,
        ) as bar:  # fmt: skip
            for study, runs in studies.items():
                bar.set_description(f"track {study}")
                # One `initlab track` at a time per study and store: a second finds the runs logged.
                locks.enter_context(store_lock(tracking_uri(), name=f"track-{study}"))
                exp = experiment_id(cl, study)
                done = finished_keys(cl, exp)
                out["runs"][study] = {}
                for r in runs:
                    if r.key in done:
                        out["runs"][study][r.run_name] = done[r.key]
                        out["skipped"] += 1
                        bar.update()
                    else:
                        todo.append((study, exp, r))
            if saver is not None and len(todo) < SAVER_MIN_RUNS:
                saver.stop()
                saver = None
            requirements: list[str] | None = None  # torch is imported here only if needed
            modules: dict = {}

            def finish(i: int) -> None:
                study, _, r = todo[i]
                rid = waiting.pop(i)
                end_run(cl, rid, "FINISHED")
                out["runs"][study][r.run_name] = rid
                out["logged"] += 1
                bar.update()

            for i, (study, exp, r) in enumerate(todo):
                raise_if_interrupted()
                if i == 0 or study != todo[i - 1][0]:
                    bar.set_description(f"track {study}")
                tags, metrics, run_params = run_contents(r, commit, max_points)
                with deferred_signals():  # no signal between the run's creation and `waiting`
                    info = cl.create_run(exp, run_name=r.run_name, tags=tags).info
                    waiting[i] = info.run_id
                # Held for the call (tens of ms): a signal inside SQLAlchemy's flush left the
                # transaction open and the run could not be ended KILLED ("database is locked").
                with deferred_signals():
                    log_metrics(cl, info.run_id, metrics, run_params)
                local = local_dir(info.artifact_uri) if log_models else None
                if saver is not None and local is not None:
                    saver.save(i, r, str(local / "model"))
                elif log_models:
                    requirements = requirements or _model_requirements()
                    log_model(cl, info.run_id, load_module(r.weights, r.arch, modules), r.arch, requirements,
                              info.artifact_uri)  # fmt: skip
                    finish(i)
                else:
                    finish(i)
                for j in saver.saved() if saver is not None else ():
                    finish(j)
            if saver is not None:
                for j in saver.saved(until_done=True):
                    finish(j)
                saver = None
        status = "FINISHED"
        return out
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        with deferred_signals():  # end every open run, even if a second signal comes
            if saver is not None:
                saver.stop()
            for rid in waiting.values():
                end_run(cl, rid, status)


class _Saver:
    """A process that saves models into runs' artifact folders, given them one by one."""

    def __init__(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # a fresh interpreter: forking a process that holds
        self.jobs, self.done = ctx.Queue(), ctx.Queue()  # SQLite connections is unsafe
        self.jobs.cancel_join_thread()  # a saver stopped before reading every job must not hang us
        self.sent = self.received = 0
        self.proc = ctx.Process(target=_saver_main, name="initlab-model-saver", daemon=True,
                                args=(self.jobs, self.done))  # fmt: skip
        self.proc.start()

    def save(self, i: int, r: TrainedRun, path: str) -> None:
        self.jobs.put((i, str(r.weights), r.arch, path))  # a feeder thread sends it: no waiting
        self.sent += 1

    def saved(self, until_done: bool = False) -> Iterator[int]:
        """Indices whose model is saved; with ``until_done``, until every one sent is."""
        import queue

        if until_done:
            self.jobs.put(None)
        while not until_done or self.received < self.sent:
            try:
                msg = self.done.get(timeout=0.2) if until_done else self.done.get_nowait()
            except queue.Empty:
                if not until_done:
                    return
                if not self.proc.is_alive():
                    raise StoreError(f"the model-saving process exited {self.proc.exitcode} "
                                     "before it was done") from None  # fmt: skip
                continue
            if msg[0] == "error":
                raise StoreError(f"saving a model for MLflow: {msg[1]}")
            self.received += 1
            yield msg[1]
        if until_done:
            self.proc.join(timeout=60)

    def stop(self) -> None:
        """SIGTERM (SIGKILL if it was never sent a model: it has nothing to clean up, and a
        process still importing torch took ~1.3 s to exit on SIGTERM), then wait for it to exit."""
        if self.proc.is_alive():
            if self.sent == 0:
                self.proc.kill()
            else:
                self.proc.terminate()
        self.proc.join(timeout=120)
        if self.proc.is_alive():  # pragma: no cover - stuck: do not leave it behind
            self.proc.kill()
            self.proc.join()


def _saver_main(jobs, done) -> None:
    """``_Saver``'s process: import torch and MLflow first, then save models until told to stop."""
    job = None
    try:
        with sigterm_raises():
            import torch  # imported now, while the other process reads the runs and opens the store
            from mlflow.exceptions import MlflowException  # noqa: F401 - and mlflow

            # Loading and saving small models gains little from a second thread, and its OpenMP
            # spin-waits took CPU from the other process (median of its store calls 6.4 -> 5.3 s).
            torch.set_num_threads(1)

            requirements = _model_requirements()
            modules: dict = {}
            while (job := jobs.get()) is not None:
                i, weights, arch, path = job
                save_model(load_module(weights, arch, modules), path, arch, requirements)
                done.put(("saved", i))
        # All saved and reported (flushed below). Leave without the interpreter's teardown of
        # torch and MLflow, ~1.3 s that `track` would spend waiting for this process to exit.
        done.close()
        done.join_thread()
        os._exit(0)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BaseException as exc:
        first = (str(exc).strip().splitlines() or [""])[0]  # torch's load errors run to a page
        where = f"{job[1]}: " if job else ""
        done.put(("error", f"{where}{type(exc).__name__}: {first}"))
        raise SystemExit(1) from None
