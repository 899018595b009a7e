"""The track stage (``initlab track``): every study's trained runs checked, then logged to MLflow
(``log``), then its output (``pipeline/tracking.json``) and its timing written; what it did, in
the lines the command prints."""

from __future__ import annotations

import time

from initlab.params.paths import Paths
from initlab.params.schema import Params


def track_studies(params: Params, names: list[str], paths: Paths, t0: float) -> dict:
    """Log the runs of ``names``; every input is checked before MLflow is opened. Writes
    ``paths.tracked`` (study -> run name -> run id; the same file when the store holds the same
    runs) and ``paths.timing("track")``, whose ``mlflow_seconds`` run from ``t0``. Returns
    ``log_studies``' counts, ``seconds`` and the store's ``uri``."""
    from initlab.core.io import write_json
    from initlab.core.signals import sigterm_raises
    from initlab.tracking.location import tracking_uri
    from initlab.tracking.log import log_studies
    from initlab.tracking.runs import trained_runs

    for name in names:
        params.study(name)
    with sigterm_raises():
        runs = {s: trained_runs(params, s, paths) for s in names}  # every input checked before MLflow
        out = log_studies(params, runs, paths)
        write_json(paths.tracked, {"runs": out["runs"], "parents": out["parents"]})
        seconds = time.perf_counter() - t0
        write_json(
            paths.timing("track"),
            {
                "mlflow_seconds": seconds,
                "tracking_uri": tracking_uri(),
                **{k: out[k] for k in ("logged", "skipped", "orphans")},
            },
        )
    return {**out, "seconds": seconds, "uri": tracking_uri()}


def track_lines(out: dict) -> list[str]:
    """What ``track_studies`` did, as the lines ``initlab track`` prints: leftovers deleted, runs
    ended KILLED, then the runs logged and skipped."""
    lines = []
    if out["deleted"]:
        lines.append(
            f"track: deleted {out['deleted']} FAILED or KILLED runs left by an earlier track that failed "
            "(their runs are FINISHED now; `mlflow gc` purges them)"
        )
    if out["orphans"]:
        lines.append(
            f"track: ended KILLED {out['orphans']} runs left RUNNING by a killed track; "
            "their models were logged again"
        )
    lines.append(
        f"track: {out['logged']} runs logged, {out['skipped']} already there, in "
        f"{out['seconds']:.1f} s -> {out['uri']}"
    )
    return lines
