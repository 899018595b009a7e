"""The markdown comparison report: tables, the seeds' figures beside ours, and plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from initlab.config import CompareRow, InitSpec, Params, Paths, TorchvisionSource  # noqa: E402
from initlab.io import atomic_path, load_weights, read_csv, read_json, read_npz  # noqa: E402
from initlab.models import build_module  # noqa: E402
from initlab.registry import init_linear  # noqa: E402


def _pm(mean: float, std: float, digits: int = 4) -> str:
    if np.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {0.0 if np.isnan(std) else std:.{digits}f}"


def variant_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: mean ± std over seeds, diverged count; best test accuracy first."""
    rows = []
    for variant, g in df.groupby("variant"):
        r = g.iloc[0]
        rows.append({
            "variant": variant, "init": r["init"], "loss": r["loss"], "normalize": r["normalize"],
            "lr": f"{r['lr']:g}",
            "train loss": _pm(g["train_loss"].mean(), g["train_loss"].std()),
            "val acc": _pm(g["val_accuracy"].mean(), g["val_accuracy"].std()),
            "test acc": _pm(g["test_accuracy"].mean(), g["test_accuracy"].std()),
            "diverged": f"{int(g['diverged'].sum())}/{len(g)}" if g["diverged"].any() else "no",
            "_key": -np.nan_to_num(g["test_accuracy"].mean(), nan=-1.0),
            "_loss": np.nan_to_num(g["train_loss"].mean(), nan=np.inf),
        })  # fmt: skip
    out = pd.DataFrame(rows).sort_values(["_key", "_loss", "variant"])
    return out.drop(columns=["_key", "_loss"])


def _curve(curves: dict, run: str, key: str) -> np.ndarray:
    return curves.get(f"{run}/{key}", np.array([]))


def fig_first_batches(df, curves, n, out: Path) -> None:
    losses = sorted(df["loss"].unique())
    fig, axes = plt.subplots(1, len(losses), figsize=(7 * len(losses), 4.8), squeeze=False)
    for ax, loss in zip(axes[0], losses):
        sub = df[(df["loss"] == loss) & (df["seed"] == df["seed"].min())]
        for run in sub.itertuples():
            ax.plot(_curve(curves, run.run_name, "step_loss")[:n], label=run.init, lw=1)
        ax.set(title=f"first {n} batches, loss = {loss}", xlabel="batch", ylabel="training loss",
               yscale="log")  # fmt: skip
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def fig_init_histograms(inits: dict[str, InitSpec], labels: list[str], shape: tuple[int, int],
                        out: Path) -> None:  # fmt: skip
    """The first layer's initial weights (``shape``: fan-out, fan-in) under each initialiser."""
    cols = 5
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, label in zip(axes.flat, labels):
        spec = inits[label]
        w, b = torch.empty(*shape), torch.empty(shape[0])
        init_linear(w, b, spec.name, spec.args, spec.bias, torch.Generator().manual_seed(0))
        ax.hist(w.flatten().numpy(), bins=80, color="tab:blue")
        ax.set_title(f"{label}\nmean {w.mean():.3g}, std {w.std():.3g}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    fig.suptitle(f"initial weights of a {shape[1]} -> {shape[0]} layer, per initialiser")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def fig_loss_curves(df, curves, title: str, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.8))
    sub = df[df["seed"] == df["seed"].min()].sort_values("variant")
    for run in sub.itertuples():
        c = _curve(curves, run.run_name, "step_loss")
        if len(c):
            ax.plot(np.arange(1, len(c) + 1), c, label=run.variant, lw=1)
    ax.set(title=title, xlabel="optimiser step", ylabel="training loss", xscale="log",
           yscale="log")  # fmt: skip
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def fig_decision_boundary(df, study: str, paths: Paths, out: Path) -> None:
    d = read_npz(paths.prepared(study), study=study)
    x = np.concatenate([d["x_train"], d["x_val"], d["x_test"]])
    y = np.concatenate([d["y_train"], d["y_val"], d["y_test"]])
    pick = df[df["reproduce"]] if df["reproduce"].any() else df
    run = pick.iloc[0]
    arch = json.loads(run["arch"])
    if run["diverged"]:
        return
    module = build_module(**arch)
    module.load_state_dict(load_weights(paths.trained(study) / "weights" / f"{run['run_name']}.pt"))
    g = np.linspace(x.min() - 0.3, x.max() + 0.3, 300, dtype=np.float32)
    xx, yy = np.meshgrid(g, g)
    grid = np.c_[xx.ravel(), yy.ravel()]
    if run["normalize"] == "zscore":  # the model's inputs, as evaluate gives them (data.load_split)
        stats = read_json(paths.norm_stats(study))
        grid = ((grid * stats["scale"] - np.array(stats["mean"])) / np.array(stats["std"])).astype(np.float32)
    with torch.no_grad():
        z = module(torch.from_numpy(grid)).numpy().reshape(xx.shape)
    if arch["head"] == "none":
        z = 1 / (1 + np.exp(-z))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.contourf(xx, yy, z, levels=20, cmap="RdBu_r", alpha=0.6)
    ax.contour(xx, yy, z, levels=[0.5], colors="k")
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu_r", s=8, edgecolors="k", linewidths=0.2)
    ax.set(xlabel="x1", ylabel="x2")
    ax.set_title(f"{study}: decision boundary of\n{run['run_name']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _one(df, **where) -> pd.DataFrame:
    m = np.ones(len(df), dtype=bool)
    for k, v in where.items():
        m &= df[k] == v
    return df[m]


def compare_row(row: CompareRow, df: pd.DataFrame) -> str | None:
    """One line of the seeds' table: the seed's figure and ours, read from this run's results."""
    r = _one(df, **row.where)
    if not len(r):
        return None
    values = r[row.metric]
    if row.show == "rank":
        means = r.groupby(row.rank_by)[row.metric].mean().sort_values(ascending=False, kind="stable")
        ours = f"top {row.top} by {row.label or row.metric}: " + ", ".join(
            f"{k} {100 * v:.{row.digits}f} %" for k, v in means.head(row.top).items())  # fmt: skip
    elif row.show == "percent":
        ours = f"{100 * values.mean():.{row.digits}f} %"
    elif row.show == "mean_std":
        ours = _pm(values.mean(), values.std(), row.digits)
    else:
        ours = f"{values.mean():.{row.digits}f}"
    return f"| {row.seed} | {row.claim} | {row.theirs} | {ours} |"


def seed_comparison(params: Params, frames: dict[str, pd.DataFrame]) -> list[str]:
    """The seeds' own figures beside ours: each study's ``compare`` rows (params.yaml)."""
    lines = ["| seed | claim | seed's figure | ours |", "|---|---|---|---|"]
    for study, df in frames.items():
        lines += [line for row in params.study(study).compare if (line := compare_row(row, df))]
    return lines


def render(params: Params, paths: Paths, studies: tuple[str, ...] | None = None) -> str:
    """Every study of ``params`` (or ``studies``) that has been evaluated: one section each, its
    figures chosen by its data (two features: a decision boundary; images: the first batches and
    the initial weights; otherwise: training loss curves)."""
    studies = tuple(params.studies) if studies is None else studies
    figs = paths.reports / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    frames, summaries, md = {}, {}, []
    for study in studies:
        if paths.evaluated(study).exists():
            df = read_csv(paths.evaluated(study), ("run_name", "variant", "test_accuracy"))
            df = df.merge(read_csv(paths.trained(study) / "runs.csv", ("run_name", "arch"))[["run_name", "arch"]],
                          on="run_name")  # fmt: skip
            frames[study] = df
            summaries[study] = read_json(paths.prepared(study).with_suffix(".json"))
    md += ["# initlab report", "",
           "Every number below was produced by `dvc repro` from `params.yaml`; accuracies are on "
           "held-out test splits unless a row says otherwise. Mean ± std over seeds.", "",
           "## The seeds' figures beside ours", ""]  # fmt: skip
    md += seed_comparison(params, frames) + [""]
    for study, df in frames.items():
        s = summaries[study]
        curves = read_npz(paths.trained(study) / "curves.npz")
        sp = params.study(study)
        md += [f"## {sp.title}", ""]
        if sp.question:
            md += [f"*{sp.question}*", ""]
        sizes = s["sizes"]
        md.append(f"Splits: train {sizes['train']}, validation {sizes['val']}, test {sizes['test']}"
                  f"; majority-class baseline on test: {s['majority_baseline_test']:.3f}.")
        if "beats" in s:  # an ECG study
            md.append(f"{s['beats']} beats, mean {s['bpm_mean']} ± {s['bpm_std']} bpm; label = bpm > "
                      f"{s['threshold_bpm']:.2f} (the training split's median unless set); class "
                      f"balance (0/1) train {s['class_balance']['train']}, test "
                      f"{s['class_balance']['test']}.")  # fmt: skip
        if df["reproduce"].any():
            md.append("Rows named `reproduce-…` run the seed's own setup"
                      + (" on all data, so their test accuracy is not held out."
                         if study == "circles" else "."))  # fmt: skip
        md += ["", variant_table(df).to_markdown(index=False), ""]
        arch = json.loads(df["arch"].iloc[0])
        if isinstance(sp.data, TorchvisionSource):
            n = params.report.first_batches
            fig_first_batches(df, curves, n, figs / f"{study}_first_batches.png")
            labels = list(dict.fromkeys(df["init"]))
            fig_init_histograms(sp.inits, labels, (arch["sizes"][1], arch["sizes"][0]),
                                figs / f"{study}_init_histograms.png")  # fmt: skip
            md += [f"![loss over the first {n} batches](figures/{study}_first_batches.png)",
                   "", f"![initial weights](figures/{study}_init_histograms.png)", ""]  # fmt: skip
            cls = [c for c in df.columns if c.startswith("test_accuracy_class_")]
            if cls:
                best = df.groupby("variant")["test_accuracy"].mean().idxmax()
                pc = df[df["variant"] == best][cls].mean()
                from initlab.data import FASHION_MNIST_CLASSES

                names = FASHION_MNIST_CLASSES if sp.data.dataset == "FashionMNIST" else None

                md += [f"Per-class test accuracy of the best variant (`{best}`): "
                       + ", ".join(f"{names[int(c.rsplit('_', 1)[1])] if names else c.rsplit('_', 1)[1]} {v:.3f}"
                                   for c, v in pc.items()), ""]  # fmt: skip
        elif arch["sizes"][0] == 2:
            fig_decision_boundary(df, study, paths, figs / f"{study}_boundary.png")
            md += [f"![{study} decision boundary](figures/{study}_boundary.png)", ""]
        else:
            fig_loss_curves(df, curves, f"{study}: training loss, seed {df['seed'].min()}",
                            figs / f"{study}_loss.png")  # fmt: skip
            md += [f"![{study} training loss](figures/{study}_loss.png)", ""]
    return "\n".join(md) + "\n"


def write_report(params: Params, paths: Paths) -> Path:
    text = render(params, paths)
    out = paths.reports / "report.md"
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return out
