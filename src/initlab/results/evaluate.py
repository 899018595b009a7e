"""Evaluation of every trained model on the held-out test split (never seen in training)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from initlab.core.io import atomic_path, load_weights, read_csv, read_json, write_json
from initlab.data.splits import load_split
from initlab.errors import ParamsError
from initlab.nets.heads import predictions, targets
from initlab.nets.models import build_module
from initlab.nets.registry import LOSSES
from initlab.params.paths import Paths

RUN_COLUMNS = ("run_name", "variant", "init", "loss", "normalize", "lr", "seed", "reproduce", "diverged", "arch")


def evaluate_study(study: str, paths: Paths, device: str = "cpu") -> pd.DataFrame:
    """Test loss, accuracy and per-class accuracy of each run in ``pipeline/train/<study>``."""
    table = paths.trained(study) / "runs.csv"
    if not table.exists():
        raise ParamsError(f"{table} missing; run `dvc repro train@{study}` first")
    runs = read_csv(table, RUN_COLUMNS)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # ATen's parallel reductions would make the bits follow the cores
    try:
        return runs.merge(pd.DataFrame(test_rows(study, runs, paths, device)), on="run_name")
    finally:
        torch.set_num_threads(before)


def test_rows(study: str, runs: pd.DataFrame, paths: Paths, device: str) -> list[dict]:
    """Each run's test loss, accuracy and per-class accuracy."""
    cache: dict[str, tuple] = {}
    rows = []
    for run in runs.itertuples(index=False):
        arch = json.loads(run.arch)
        norm = "none" if run.normalize == "batchnorm" else run.normalize
        if norm not in cache:
            cache[norm] = load_split(study, "test", norm, paths, device)
        x, y = cache[norm]
        row = {"run_name": run.run_name, "test_loss": np.nan, "test_accuracy": np.nan}
        n_classes = max(2, arch["sizes"][-1])
        if not run.diverged:
            module = build_module(**arch)
            module.load_state_dict(load_weights(paths.trained(study) / "weights" / f"{run.run_name}.pt"))
            module.to(device).eval()
            loss = LOSSES[run.loss]
            with torch.no_grad():
                out = module(x).unsqueeze(0)
                t = targets(y, loss, n_classes)
                t = t.unsqueeze(0) if loss.class_targets else t.unsqueeze(0).expand_as(out)
                row["test_loss"] = float(loss.fn(out, t)[0])
                pred = predictions(out, arch["head"])[0]
            correct = (pred == y).float()
            row["test_accuracy"] = float(correct.mean())
            if n_classes > 2:
                for c in range(n_classes):
                    row[f"test_accuracy_class_{c}"] = float(correct[y == c].mean())
        rows.append(row)
    return rows


def summarise(df: pd.DataFrame) -> dict:
    """DVC metrics, four numbers per study so that `dvc metrics diff` and `dvc exp show` fit a
    screen: the best, mean and worst of the variants' mean test accuracies (a diverged variant
    counts as missing), and the share of runs that diverged. The per-seed figures are in
    pipeline/evaluate/<study>.csv, the per-variant ones in the report."""
    means = df.groupby("variant")["test_accuracy"].mean().dropna()
    out = {"diverged": round(float(df["diverged"].mean()), 4)}
    if len(means):
        out.update(
            best_test_acc=round(float(means.max()), 4),
            mean_test_acc=round(float(means.mean()), 4),
            worst_test_acc=round(float(means.min()), 4),
        )
    return out


def variant_stats(df: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: mean and 95 % interval over seeds, and a verdict against the best
    (``initlab.results.stats``) of its architecture (``train.models``). The study's own variants are
    compared on test accuracy; its ``reproduce-`` rows, the seed's protocol, among themselves on
    the seed's figure, validation accuracy (measured as the seed measured it)."""
    from initlab.results.stats import mean_interval, verdicts

    parts = []
    by_model = model_column(df)  # several architectures: each variant is judged against its own's best
    for key, runs in df.groupby(["reproduce", *by_model], sort=True):
        reproduce = bool(key[0])
        metric = "val_accuracy" if reproduce else "test_accuracy"
        v = verdicts(runs, metric)
        v.insert(1, "metric", metric)
        ident = runs.groupby("variant", sort=False)[
            [*model_column(df), "init", "loss", "normalize", "lr", "reproduce"]
        ].first()
        test = pd.DataFrame(
            [
                (name, *mean_interval(g["test_accuracy"].to_numpy(dtype=float)))
                for name, g in runs.groupby("variant", sort=False)
            ],
            columns=["variant", "test_mean", "test_ci_low", "test_ci_high"],
        )  # no second test
        parts.append(v.merge(ident, left_on="variant", right_index=True).merge(test, on="variant"))
    out = pd.concat(parts, ignore_index=True)
    cols = [
        "variant",
        *model_column(df),
        "init",
        "loss",
        "normalize",
        "lr",
        "reproduce",
        "n",
        "diverged",
        "metric",
        "mean",
        "ci_low",
        "ci_high",
        "p_vs_best",
        "verdict",
        "test_mean",
        "test_ci_low",
        "test_ci_high",
    ]
    return out[cols]


def model_column(df: pd.DataFrame) -> list[str]:
    """``["model"]`` for a study of several architectures (``train.models``), else none."""
    return ["model"] if "model" in df.columns else []


CURVE_POINTS = 200  # per variant in the DVC plot of training loss; the full curves: curves.npz


def loss_curves(df: pd.DataFrame, curves: dict[str, np.ndarray]) -> pd.DataFrame:
    """Each variant's training loss per step, the mean over its seeds, at up to ``CURVE_POINTS``
    log-spaced steps (long format: variant, step, train_loss), for ``dvc plots``."""
    parts = []
    for variant, g in df.groupby("variant", sort=True):
        runs = [curves.get(f"{r}/step_loss", np.array([])) for r in g["run_name"]]
        n = min(len(c) for c in runs)
        if n == 0:  # diverged at its first step
            continue
        mean = np.nanmean(np.stack([c[:n] for c in runs]), axis=0)
        steps = np.unique(np.geomspace(1, n, CURVE_POINTS).astype(int))
        keep = np.isfinite(mean[steps - 1]) & (mean[steps - 1] > 0)
        loss = mean[steps - 1]
        parts.append(pd.DataFrame({"variant": variant, "step": steps[keep], "train_loss": loss[keep]}))
    empty = pd.DataFrame(columns=["variant", "step", "train_loss"])
    return pd.concat(parts, ignore_index=True) if parts else empty


def layer_profile(df: pd.DataFrame, diag: pd.DataFrame) -> pd.DataFrame:
    """Each variant's diagnostics at initialisation, the mean over its seeds, per layer (long
    format: variant, layer, then every statistic), for ``dvc plots``: act_std against depth."""
    from initlab.nets.diagnostics import STATS

    init = diag[diag["point"] == "init"].merge(df[["run_name", "variant"]], on="run_name")
    out = init.groupby(["variant", "layer"], sort=True)[list(STATS)].mean().reset_index()
    return out


def write_evaluation(study: str, df: pd.DataFrame, paths: Paths) -> None:
    """The per-run table (``initlab track`` logs its test metrics), the per-variant table with
    intervals and verdicts, the training-loss curves as data, and the DVC metrics."""
    from initlab.core.io import read_npz

    with atomic_path(paths.evaluated(study)) as tmp:
        df.drop(columns=["arch"]).to_csv(tmp, index=False)
    with atomic_path(paths.variants(study)) as tmp:
        variant_stats(df).to_csv(tmp, index=False, float_format="%.6g")
    curves = read_npz(paths.trained(study) / "curves.npz")
    with atomic_path(paths.curves(study)) as tmp:
        loss_curves(df, curves).to_csv(tmp, index=False, float_format="%.6g")
    diag = read_csv(paths.trained(study) / "diagnostics.csv", ("run_name", "point", "layer"))
    with atomic_path(paths.layers(study)) as tmp:
        layer_profile(df, diag).to_csv(tmp, index=False, float_format="%.6g")
    write_json(paths.metrics(study), summarise(df))
    from initlab.results.verify import record

    platform = read_json(paths.trained(study) / "platform.json")
    write_json(paths.runs_record(study), record(df, platform))
