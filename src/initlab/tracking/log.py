"""MLflow tracking: one experiment per study (``initlab-<study>``), a parent run per variant holding
its mean and 95 % interval over seeds and its verdict, and one nested run per trained model (seed).

Train and evaluate never touch MLflow (importing it and opening a store cost seconds per
process). ``initlab track`` reads what they wrote (``pipeline/train/<study>/``,
``pipeline/evaluate/<study>.csv``) and logs each model as one run: tags, params, curves strided to
``tracking.max_points_per_metric`` points, its final and test metrics in one ``log_batch``, and the
model in MLflow's pytorch format, saved as ``pt2`` (a traced graph: loading it runs no pickle).

Logging is idempotent, a variant at a time: each run is tagged ``initlab.run_key``, a SHA-256 of
what it shows (the weights, curves, the evaluate row, the logged params and settings, and its
parent's key); a variant whose parent and seeds are all FINISHED in its study is not logged again,
and one that changed is logged again whole, under a new parent. FAILED and KILLED runs do not count.
A run's start and end are its training's (``pipeline/timings``), not the moment it was logged.

Every run is ended by one ``try/finally``: FINISHED, FAILED on an error, KILLED on Ctrl-C or
SIGTERM. A run left RUNNING by a process that was killed outright (tagged ``initlab.owner``,
host and pid) is ended KILLED by the next ``track`` on that host, and its model logged again.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from initlab.errors import DataError, ParamsError, StoreError
from initlab.params.paths import Paths
from initlab.params.schema import Params
from initlab.tracking.existing import (
    DVC_EXP_TAG,
    OWNER_TAG,
    RUN_KEY_TAG,
    end_orphans,
    store_runs,
    sweep_litter,
)
from initlab.tracking.location import artifact_location, tracking_uri
from initlab.tracking.models import ModelWriter, save_model
from initlab.tracking.runs import TrainedRun, VariantRun
from initlab.tracking.store import deferred_signals, is_sql, open_client, store_lock

MAX_BATCH, MAX_PARAMS = 1000, 100  # MLflow's limits per log_batch call
# Curves as logged (their own keys: a final value logged under a curve's key spikes its chart) and saved.
LOGGED_STATS = ("act_std", "grad_norm", "saturated", "dead", "update_ratio")  # of initlab.nets.diagnostics.STATS
CURVES = {"train_loss_step": "step_loss", "val_loss_epoch": "val_loss", "val_accuracy_epoch": "val_acc"}


def run_contents(r: TrainedRun, max_points: int) -> tuple[list, list]:
    """``r``'s metrics (curves strided to at most ``max_points`` points, final, test) and params."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in r.metrics.items()]
    for key, curve in CURVES.items():
        values = r.curves[curve]
        steps = np.flatnonzero(np.isfinite(values))  # validated epochs only (every val_every-th)
        steps = steps[:: max(1, math.ceil(len(steps) / max_points))]
        metrics += [Metric(key, float(values[s]), now, int(s)) for s in steps]
    # Diagnostics: a history per point and statistic whose step is the layer (1 = first), so the
    # run's chart of diag/init/act_std is the activation std against depth. The others (means,
    # pre-activations, gradient ratio) are in pipeline/train/<study>/diagnostics.csv.
    metrics += [
        Metric(f"diag/{key}", float(x), now, k + 1)
        for key, values in r.layers.items()
        if key.split("/")[1] in LOGGED_STATS
        for k, x in enumerate(values)
        if math.isfinite(x)
    ]
    return metrics, [Param(k, v) for k, v in r.params.items()]


def log_batch(cl, run_id: str, metrics: list, params: list) -> None:
    """``log_batch`` in chunks of MLflow's limits."""
    while params or metrics:
        p, params = params[:MAX_PARAMS], params[MAX_PARAMS:]
        m, metrics = metrics[: MAX_BATCH - len(p)], metrics[MAX_BATCH - len(p) :]
        cl.log_batch(run_id, metrics=m, params=p, synchronous=True)


@contextlib.contextmanager
def new_run(cl, experiment: str, name: str, tags: dict, seconds: float | None = None):
    """A run that ends FINISHED, FAILED on an error, KILLED on an interruption; yields its info.

    ``seconds``: how long the work it records took; the run starts that long before now, so the
    UI's duration is the training's, not the logging's."""
    sql = is_sql(tracking_uri())  # a signal inside a SQL write leaves its transaction open
    start = int(1000 * (time.time() - seconds)) if seconds else None
    run_id, status = None, "FAILED"
    try:
        with deferred_signals(sql):
            info = cl.create_run(experiment, start_time=start, run_name=name, tags=tags).info
            run_id = info.run_id
        yield info
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if run_id is not None:
            with deferred_signals(sql):
                cl.set_terminated(run_id, status)


def log_variant(
    cl,
    experiment: str,
    v: VariantRun,
    tags: dict,
    max_points: int,
    models: ModelWriter | None,
    dataset,
    runs: dict[str, list] | None = None,
) -> tuple[str, dict[str, str], int, int]:
    """``v`` as a parent run (its mean, interval and verdict) with one nested run per seed (its
    curves, metrics, dataset and model); returns the parent's id, the seeds' run ids, how many
    seeds' runs it logged and how many leftover runs it deleted.

    A variant a failed ``track`` left part-logged (``runs``: ``store_runs`` of the experiment) is
    completed, not logged again: its parent run is reused and ended FINISHED, a seed already
    FINISHED under it is kept, and the seeds missing are logged; the FAILED or KILLED runs of its
    keys are deleted (soft), so no FAILED twin stays beside a FINISHED run."""
    runs = runs or {}
    mine = [r for key in (v.key, *(c.key for c in v.runs)) for r in runs.get(key, [])]
    earlier = runs.get(v.key, [])
    parent_run = next((r for r in earlier if r.info.status == "FINISHED"), earlier[0] if earlier else None)
    sql = is_sql(tracking_uri())
    deleted = 0
    for r in mine:  # leftovers: a failed parent is reused, not deleted
        if r.info.status in ("FAILED", "KILLED") and r is not parent_run:
            with deferred_signals(sql):
                cl.delete_run(r.info.run_id)
            deleted += 1
    if parent_run is None:
        longest = max((r.seconds or 0.0 for r in v.runs), default=0.0)
        with new_run(cl, experiment, v.name, {**tags, **v.tags, RUN_KEY_TAG: v.key}, longest) as parent_info:
            ids, logged = _log_seeds(
                cl, experiment, v, parent_info.run_id, tags, max_points, models, dataset, runs, log_metrics=True
            )
        return parent_info.run_id, ids, logged, deleted
    parent = parent_run.info.run_id
    ids, logged = _log_seeds(
        cl,
        experiment,
        v,
        parent,
        tags,
        max_points,
        models,
        dataset,
        runs,
        log_metrics=set(v.metrics) - set(parent_run.data.metrics) != set(),
    )
    if parent_run.info.status != "FINISHED":
        with deferred_signals(sql):
            cl.set_terminated(parent, "FINISHED")
    return parent, ids, logged, deleted


def _log_seeds(
    cl,
    experiment: str,
    v: VariantRun,
    parent: str,
    tags: dict,
    max_points: int,
    models: ModelWriter | None,
    dataset,
    runs: dict[str, list],
    log_metrics: bool,
) -> tuple[dict[str, str], int]:
    """The parent's metrics (when ``log_metrics``) and each seed's run not already FINISHED under
    ``parent`` (one FINISHED under another parent of the variant is moved under this one)."""
    from mlflow.entities import Metric

    sql = is_sql(tracking_uri())
    now = int(time.time() * 1000)
    ids, logged = {}, 0
    if log_metrics:
        with deferred_signals(sql):
            log_batch(cl, parent, [Metric(k, x, now, 0) for k, x in v.metrics.items()], [])
    for r in v.runs:
        done = [x for x in runs.get(r.key, []) if x.info.status == "FINISHED"]
        if done:
            kept = next((x for x in done if x.data.tags.get("mlflow.parentRunId") == parent), done[0])
            if kept.data.tags.get("mlflow.parentRunId") != parent:
                with deferred_signals(sql):
                    cl.set_tag(kept.info.run_id, "mlflow.parentRunId", parent)
            ids[r.run_name] = kept.info.run_id
            continue
        child_tags = {**tags, **r.tags, RUN_KEY_TAG: r.key, "mlflow.parentRunId": parent}
        with new_run(cl, experiment, f"seed {r.tags['seed']}", child_tags, r.seconds) as info:
            run_id = info.run_id
            metrics, params = run_contents(r, max_points)
            with deferred_signals(sql):
                log_batch(cl, run_id, metrics, params)
                cl.log_inputs(run_id, datasets=[dataset])
            if models is not None:
                save_model(cl, info, r, models)
            ids[r.run_name] = run_id
            logged += 1
    return ids, logged


def dataset_input(study: str, paths: Paths):
    """The prepared split of ``study`` as an MLflow dataset input: its file and SHA-256 digest."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    from initlab.core.io import sha256

    path = paths.prepared(study)
    with warnings.catch_warnings():  # MLflow registers two local-file sources and says it picked one
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(path.resolve()))
    ds = MetaDataset(source, name=f"{study} (prepared splits)", digest=sha256(path)[:16])
    return DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "training")])


def log_studies(
    params: Params, studies: dict[str, list[VariantRun]], paths: Paths, progress: bool | None = None
) -> dict:
    """Log every run of ``studies`` not already FINISHED in its study's experiment.

    Returns ``{"runs": {study: {run_name: run_id}}, "parents": {study: {variant: run_id}},
    "logged": n, "skipped": k, "orphans": m}`` (n, k: seeds' runs); a skipped run's id is the one
    already in the store. A store error is one ``StoreError`` line.
    """
    from tqdm.auto import tqdm

    uri, settings = tracking_uri(), params.tracking
    datasets = {study: dataset_input(study, paths) for study in studies}  # read before the store is opened
    cl = open_client(uri, settings.store_timeout_s)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        commit = ""
    tags = {"git_commit": commit.strip() or "unknown", OWNER_TAG: f"{socket.gethostname()}:{os.getpid()}"}
    if os.environ.get("DVC_EXP_NAME"):  # set by DVC in `dvc exp run` (queued ones included)
        tags[DVC_EXP_TAG] = os.environ["DVC_EXP_NAME"]
    out: dict = {"runs": {}, "parents": {}, "logged": 0, "skipped": 0, "orphans": 0, "deleted": 0}
    total = sum(len(v.runs) for vs in studies.values() for v in vs)
    with (
        tempfile.TemporaryDirectory(prefix="initlab-models-") as scratch,
        tqdm(
            total=total,
            desc=f"track {next(iter(studies), '')}",
            unit="run",
            disable=None if progress is None else not progress,
        ) as bar,
    ):
        models = ModelWriter(Path(scratch)) if settings.log_models else None
        try:
            for study, variants in studies.items():
                bar.set_description(f"track {study}")
                with store_lock(uri, f"track-{study}"):  # a second `track` of the study finds them logged
                    name = f"initlab-{study}"
                    if cl.get_experiment_by_name(name) is None:
                        try:
                            cl.create_experiment(name, artifact_location=artifact_location(name))
                        except Exception:
                            if cl.get_experiment_by_name(name) is None:  # not created meanwhile by another
                                raise
                    experiment = cl.get_experiment_by_name(name)
                    exp = experiment.experiment_id
                    if experiment.lifecycle_stage == "deleted":  # deleted in the UI: its name is still taken
                        raise StoreError(
                            f"MLFLOW_TRACKING_URI={uri}: experiment {name} (id {exp}) is deleted; "
                            f"restore it (`mlflow experiments restore --experiment-id {exp}`) or "
                            "remove it for good (`mlflow gc`), then run track again"
                        )
                    cl.set_experiment_tag(exp, "mlflow.experimentKind", "custom_model_development")  # runs first
                    out["orphans"] += end_orphans(cl, exp)
                    runs = store_runs(cl, exp)
                    out["deleted"] += sweep_litter(cl, runs)
                    done = {
                        key: r.info.run_id
                        for key, same in reversed(runs.items())
                        for r in reversed(same)
                        if r.info.status == "FINISHED"
                    }  # the latest FINISHED of each key
                    out["runs"][study] = ids = {}
                    out["parents"][study] = parents = {}
                    for v in variants:
                        if v.key in done and all(r.key in done for r in v.runs):
                            parents[v.name] = done[v.key]
                            ids.update({r.run_name: done[r.key] for r in v.runs})
                            out["skipped"] += len(v.runs)
                        else:
                            parents[v.name], mine, logged, deleted = log_variant(
                                cl, exp, v, tags, settings.max_points_per_metric, models, datasets[study], runs
                            )
                            ids.update(mine)
                            out["logged"] += logged
                            out["deleted"] += deleted
                            out["skipped"] += len(v.runs) - logged
                        bar.update(len(v.runs))
        except (ParamsError, DataError, StoreError):  # already one line naming the file or store
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow's, SQLAlchemy's or requests' error, in one line
            from initlab.core.io import write_refused

            refused = write_refused(exc, Path(getattr(exc, "filename", None) or "mlruns"))
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            said = str(refused) if refused else f"{type(exc).__name__}: {first[:300]}"
            raise StoreError(
                f"MLFLOW_TRACKING_URI={uri}: logging failed after {out['logged']} runs "
                f"(the next track logs the rest): {said}"
            ) from exc
    return out
