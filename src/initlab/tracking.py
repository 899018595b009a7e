"""MLflow tracking: one experiment per study, one run per trained model, metrics in batches.

The store is ``sqlite:///mlflow.db`` in the project root unless ``MLFLOW_TRACKING_URI`` names
another. Runs are opened with a context that ends them FAILED on any error and KILLED on Ctrl-C or
SIGTERM, so no run is ever left RUNNING. Two pipelines may log to one SQLite store at once:
``initlab.store`` creates a new store in one process and holds signals during a run's creation
and end.
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


def client():
    import mlflow

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


def log_metrics(cl, run_id: str, metrics: list) -> None:
    for i in range(0, len(metrics), MAX_BATCH):
        cl.log_batch(run_id, metrics=metrics[i : i + MAX_BATCH], synchronous=True)


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
    import mlflow
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
            cl.log_batch(rid, params=[Param(k, val) for k, val in p.items()], synchronous=True)
            # The model first: MLflow copies a run's metrics into a model logged after them,
            # and that copy fails on curves that share a timestamp.
            if params.tracking.log_models:
                with mlflow.start_run(run_id=rid, log_system_metrics=False):
                    # pt2 (a traced graph) loads without unpickling code; pip_requirements given
                    # skips MLflow's dependency inference (seconds per model).
                    mlflow.pytorch.log_model(
                        r.module, name="model", serialization_format="pt2",
                        input_example=np.zeros((2, r.arch["sizes"][0]), dtype=np.float32),
                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                    )  # fmt: skip
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
            log_metrics(cl, rid, metrics)
            cl.set_tag(rid, "mlflow.runName", v.run_name)
        run_ids.append(rid)
    return run_ids


def log_test_metrics(run_id: str, metrics: dict[str, float]) -> bool:
    """Add the evaluate stage's test metrics to the training run; False if the run is gone."""
    cl = client()
    try:
        cl.get_run(run_id)
    except Exception:
        return False
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if np.isfinite(v)]
    log_metrics(cl, run_id, batch)
    return True
