"""MLflow tracking: one experiment per study, one run per trained model, metrics in batches.

The store is ``sqlite:///mlflow.db`` in the project root unless ``MLFLOW_TRACKING_URI`` names
another. Runs are opened with a context that ends them FAILED on any error and KILLED on Ctrl-C or
SIGTERM, so no run is ever left RUNNING. Two pipelines may log to one SQLite store at once:
``initlab.store`` creates a new store in one process and holds signals during a run's creation
and end; WAL mode and a busy timeout let their writes wait for each other.

A run costs four store calls: ``create_run`` (with its tags), one ``log_batch`` (params, curves
strided to ``tracking.max_points_per_metric`` points, final metrics), ``log_artifacts`` (the
model) and ``set_terminated``. On SQLite the per-row ORM work of ``log_batch`` is what remains;
the full curves are in ``pipeline/train/<study>/curves.npz``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import numpy as np

from initlab.store import deferred_signals, open_client, store_lock

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch call


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so cleanup runs as it does for Ctrl-C."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def log_model(cl, run_id: str, module, arch: dict, requirements: list[str]) -> None:
    """The model in MLflow's pytorch format, as the run's ``model`` artifact.

    ``mlflow.pytorch.load_model("runs:/<run_id>/model")`` loads it, and the UI can register
    it. It is saved locally and uploaded with ``log_artifacts``, not ``log_model``: that also
    creates and finalises a LoggedModel entity, three more store transactions per run, and the
    pt2 export traces the graph; together 10x the cost (0.2-0.6 s against 20 ms per run here).
    """
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="initlab-model-") as tmp:
        mlflow.pytorch.save_model(module, f"{tmp}/model", serialization_format="pickle",
                                  signature=model_signature(arch),
                                  pip_requirements=requirements)  # fmt: skip
        cl.log_artifacts(run_id, f"{tmp}/model", "model")


def _flat_params(prefix: str, obj) -> dict[str, str]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat_params(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: str(obj)[:6000]}


def log_results(params, study: str, results: list, progress: bool | None = None) -> list[str]:
    """One MLflow run per trained model: params, tags, curves, final metrics, the model.

    Returns the run ids in the order of ``results``.
    """
    import torch
    from mlflow.entities import Metric, Param
    from tqdm.auto import tqdm

    cl = client()
    exp = experiment_id(cl, study)
    st = getattr(params.train, study)
    commit = git_commit()
    common = _flat_params("", {"train": st.model_dump(exclude={"inits", "losses", "normalize",
                                                               "lr", "seeds", "reproduce"})})
    max_points = params.tracking.max_points_per_metric
    requirements = [f"torch=={torch.__version__.split('+')[0]}"]
    run_ids = []
    for r in tqdm(results, desc=f"mlflow {study}", unit="run",
                  disable=None if progress is None else not progress):  # fmt: skip
        v = r.variant
        tags = {"study": study, "init": v.init, "loss": v.loss, "normalize": v.normalize,
                "seed": str(v.seed), "lr": f"{v.lr:g}", "variant": v.name,
                "reproduce": str(v.reproduce).lower(), "git_commit": commit,
                "diverged": str(bool(r.final["diverged"])).lower()}  # fmt: skip
        with new_run(cl, exp, run_name=v.run_name, tags=tags) as rid:
            p = {**common, "init": v.init, "loss": v.loss, "normalize": v.normalize,
                 "lr": f"{v.lr:g}", "seed": str(v.seed), "reproduce": str(v.reproduce),
                 **_flat_params("init_spec", params.inits[v.init].model_dump()),
                 **_flat_params("arch", r.arch)}  # fmt: skip
            steps = np.arange(len(r.step_loss))
            epochs = np.arange(len(r.val_loss))
            now = int(time.time() * 1000)
            metrics = (
                series("train_loss_step", r.step_loss, steps, max_points)
                + series("val_loss", r.val_loss, epochs, max_points)
                + series("val_accuracy_epoch", r.val_acc, epochs, max_points)
                + [Metric(k, float(val), now, 0) for k, val in r.final.items()
                   if isinstance(val, (int, float)) and np.isfinite(val)]
            )  # fmt: skip
            log_metrics(cl, rid, metrics, [Param(k, val) for k, val in p.items()])
            if params.tracking.log_models:
                log_model(cl, rid, r.module, r.arch, requirements)
        run_ids.append(rid)
    return run_ids


def log_test_metrics(run_id: str, metrics: dict[str, float], cl=None) -> bool:
    """Add the evaluate stage's test metrics to the training run; False if the run is gone."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if np.isfinite(v)]
    try:
        log_metrics(cl or client(), run_id, batch)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True
