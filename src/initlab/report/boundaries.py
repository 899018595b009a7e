"""Report figures drawn by the trained models themselves: the decision boundary of a two-feature
study, one panel per init or the source's own run, over every point of the study."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from initlab.core.io import load_weights, read_json, read_npz  # noqa: E402
from initlab.nets.models import build_module  # noqa: E402
from initlab.params.paths import Paths  # noqa: E402
from initlab.report.figures import first_setting  # noqa: E402


def _probability(run, study: str, paths: Paths, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """The trained model of ``run``: its probability of class 1 at each point of the grid
    ``(xx, yy)``, in the raw inputs' units (z-scored first where the model was trained so)."""
    arch = json.loads(run["arch"])
    module = build_module(**arch)
    module.load_state_dict(load_weights(paths.trained(study) / "weights" / f"{run['run_name']}.pt"))
    grid = np.c_[xx.ravel(), yy.ravel()]
    if run["normalize"] == "zscore":  # the model's inputs, as evaluate gives them (data.load_split)
        stats = read_json(paths.norm_stats(study))
        grid = ((grid * stats["scale"] - np.array(stats["mean"])) / np.array(stats["std"])).astype(np.float32)
    with torch.no_grad():
        z = module(torch.from_numpy(grid)).numpy().reshape(xx.shape)
    return 1 / (1 + np.exp(-z)) if arch["head"] == "none" else z


def fig_decision_boundary(df, study: str, paths: Paths, out: Path) -> None:
    d = read_npz(paths.prepared(study), study=study)
    x = np.concatenate([d["x_train"], d["x_val"], d["x_test"]])
    y = np.concatenate([d["y_train"], d["y_val"], d["y_test"]])
    pick = df[df["reproduce"]] if df["reproduce"].any() else df
    run = pick.iloc[0]
    if run["diverged"]:
        return
    g = np.linspace(x.min() - 0.3, x.max() + 0.3, 300, dtype=np.float32)
    xx, yy = np.meshgrid(g, g)
    z = _probability(run, study, paths, xx, yy)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.contourf(xx, yy, z, levels=20, cmap="RdBu_r", alpha=0.6)
    ax.contour(xx, yy, z, levels=[0.5], colors="k")
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu_r", s=8, edgecolors="k", linewidths=0.2)
    ax.set(xlabel="x1", ylabel="x2")
    ax.set_title(f"{study}: decision boundary of\n{run['run_name']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def fig_boundaries(df, sp, study: str, paths: Paths, out: Path) -> None:
    """The decision boundary of each init (its first seed, in the study's first setting), a panel
    each, over every point of the study (train, validation and test)."""
    d = read_npz(paths.prepared(study), study=study)
    x = np.concatenate([d["x_train"], d["x_val"], d["x_test"]])
    y = np.concatenate([d["y_train"], d["y_val"], d["y_test"]])
    runs = first_setting(df, sp)
    runs = runs[runs["seed"] == runs["seed"].min()].drop_duplicates("init")
    g = np.linspace(x.min() - 0.3, x.max() + 0.3, 250, dtype=np.float32)
    xx, yy = np.meshgrid(g, g)
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 4.2), squeeze=False)
    for ax, run in zip(axes[0], runs.to_dict("records")):
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu_r", s=8, edgecolors="k", linewidths=0.2)
        if not run["diverged"]:
            z = _probability(run, study, paths, xx, yy)
            ax.contourf(xx, yy, z, levels=20, cmap="RdBu_r", alpha=0.5)
            ax.contour(xx, yy, z, levels=[0.5], colors="k")
        ax.set_title(
            f"{run['init']}: train {run['train_accuracy']:.2f}, test {run['test_accuracy']:.2f}", fontsize=10
        )
        ax.set(xticks=[], yticks=[])
    fig.suptitle(f"{study}: decision boundaries, seed {runs['seed'].min()}, {sp.train.losses[0]}")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
