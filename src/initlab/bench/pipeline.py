"""Bench ``--pipeline``: a full ``dvc repro`` from clean timed in a copy of the project, its
seconds by kind of stage, the I/O stall meanwhile, and MLflow's share of training time."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_repro(root: Path, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """``dvc repro`` in ``root``: its wall seconds, and each stage's, from one "Running stage"
    line to the next (the stage's command and DVC's caching of its outputs)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(
        ["dvc", "repro"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    marks, text = [], []
    for line in p.stdout:
        text.append(line)
        if m := re.match(r"Running stage '([^']+)'", line):
            marks.append((m.group(1), time.perf_counter() - t0))
    total = time.perf_counter() - t0
    if p.wait() != 0:
        raise RuntimeError(f"dvc repro failed in {root}:\n{''.join(text)[-3000:]}")
    ends = [t for _, t in marks[1:]] + [total]
    return total, {name: end - start for (name, start), end in zip(marks, ends)}


def breakdown(stages: dict[str, float], train_seconds: float, total: float) -> dict[str, float]:
    """A repro's ``total`` seconds by kind of stage (``train@x`` -> ``train``), the train stages
    split into training (the trainer's own clock) and the rest (start-up, reading data, writing
    weights, DVC caching them), and DVC's start-up before the first stage; largest first."""
    kinds: dict[str, float] = {"dvc start-up": total - sum(stages.values())}
    for name, seconds in stages.items():
        kind = name.split("@")[0]
        kinds[kind] = kinds.get(kind, 0.0) + seconds
    if "train" in kinds:
        kinds["train (outside training)"] = kinds.pop("train") - train_seconds
        kinds["training"] = train_seconds
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def io_stall_seconds() -> float | None:
    """Seconds every task of the machine was stalled on I/O so far (Linux PSI ``full``), or None."""
    try:
        text = Path("/proc/pressure/io").read_text()
    except OSError:
        return None
    m = re.search(r"^full .*total=(\d+)", text, re.M)
    return int(m.group(1)) / 1e6 if m else None


def time_pipeline(project: Path, env: dict[str, str], track_repeats: int = 3, progress=print) -> dict:
    """Full ``dvc repro`` from clean in a copy of ``project``, then a no-op ``dvc repro``; training
    seconds per study, from the full one, and the ``track`` stage's MLflow seconds.

    MLflow's seconds are the median of ``track_repeats`` timings of the same ``initlab track``:
    the full repro's, then ``track_repeats - 1`` more onto new stores (each a new SQLite file,
    as the repro's was). One ``track`` run moves a lot between repeats (bench.json keeps them all),
    and the share is a target of its own; the median, unlike the fastest, does not favour it.
    """
    with tempfile.TemporaryDirectory(prefix="initlab-bench-") as tmp:
        root = Path(tmp) / "project"
        files = subprocess.run(
            ["git", "ls-files"], cwd=project, capture_output=True, text=True, check=True
        ).stdout.split()
        for f in files:
            if f == "dvc.lock" or f.startswith(("reports/", "pipeline/")):
                continue
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / f, root / f)
        env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
        for cmd in (["git", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
            subprocess.run(cmd, cwd=root, check=True, env=env, capture_output=True)
        stall = io_stall_seconds()
        out = {}
        out["full_repro_seconds"], stages = timed_repro(root, env)
        if stall is not None and (after := io_stall_seconds()) is not None:
            out["io_stall_seconds"] = after - stall
        out["noop_repro_seconds"], _ = timed_repro(root, env)
        out["stage_seconds"] = stages
        train_s = 0.0
        timings = root / "pipeline" / "timings"
        for t in sorted(timings.glob("train-*.json")):
            d = json.loads(t.read_text())
            out[f"train_{t.stem.removeprefix('train-')}"] = {k: d[k] for k in ("models", "train_seconds")}
            train_s += d["train_seconds"]
        tracking = timings / "track.json"
        tracked = json.loads(tracking.read_text())  # the one MLflow stage
        track_s = [tracked["mlflow_seconds"]]
        for i in range(1, track_repeats):
            progress(f"initlab track again, onto a new MLflow store ({i + 1}/{track_repeats}) ...")
            store = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / f'bench-store-{i}' / 'mlflow.db'}"}
            p = subprocess.run(
                [sys.executable, "-m", "initlab", "track"], cwd=root, env=store, capture_output=True, text=True
            )
            if p.returncode != 0:
                raise RuntimeError(f"initlab track failed in {root}:\n{p.stderr[-2000:]}")
            again = json.loads(tracking.read_text())
            if again["logged"] != tracked["logged"]:
                raise RuntimeError(
                    f"initlab track logged {again['logged']} runs onto a new store, "
                    f"{tracked['logged']} in the repro"
                )
            track_s.append(again["mlflow_seconds"])
        mlflow_s = statistics.median(track_s)
        out["breakdown"] = breakdown(stages, train_s, out["full_repro_seconds"])
        out.update(
            train_seconds=train_s,
            mlflow_seconds=mlflow_s,
            mlflow_all_seconds=track_s,
            mlflow_share_of_training=mlflow_s / train_s,
            mlflow_runs={"logged": tracked["logged"], "skipped": tracked["skipped"]},
        )
        return out
