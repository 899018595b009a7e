"""Report figures: one colour family per kind of initialiser, and each figure the report draws
from the tables (loss curves, first batches, initial weights, per-layer statistics); decision
boundaries, drawn by the trained models: ``boundaries``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from initlab.nets.registry import init_linear  # noqa: E402
from initlab.params.schema import InitSpec  # noqa: E402
from initlab.report.prose import CE_LOSSES  # noqa: E402
from initlab.report.tables import rows_where  # noqa: E402


def _curve(curves: dict, run: str, key: str) -> np.ndarray:
    return curves.get(f"{run}/{key}", np.array([]))


# One colour family per kind of initialiser, the same in every figure; a study's inits of one
# family get shades of it, and a line's style is its loss.
FAMILIES = {
    "zeros": "constant",
    "ones": "constant",
    "constant": "constant",
    "uniform": "fixed range",
    "normal": "fixed range",
    "uniform_rule": "1/√n rule",
    "normal_rule": "1/√n rule",
    "default": "PyTorch default",
    "xavier_uniform": "Xavier",
    "xavier_normal": "Xavier",
    "kaiming_uniform": "Kaiming",
    "kaiming_normal": "Kaiming",
    "lecun_normal": "1/√n rule",
    "large_random": "fixed range",
    "orthogonal": "orthogonal",
    "lsuv": "LSUV",
}
CMAPS = {
    "constant": "Greys",
    "fixed range": "Oranges",
    "1/√n rule": "Greens",
    "PyTorch default": "Blues",
    "Xavier": "Purples",
    "Kaiming": "Reds",
    "orthogonal": "YlOrBr",
    "LSUV": "PuRd",
}
LINESTYLES = ("-", "--", ":", "-.")


def family(inits: dict[str, InitSpec], label: str) -> str:
    return FAMILIES.get(inits[label].name, inits[label].name) if label in inits else label


def line_styles(df: pd.DataFrame, inits: dict[str, InitSpec]) -> tuple[dict, dict]:
    """Per run's (init, normalize, lr): a colour (its family's colour map, a shade per member);
    per loss: a line style. Runs that differ in more than their loss get different colours."""
    keys = list(dict.fromkeys(zip(df["init"], df["normalize"], df["lr"])))
    by_family: dict[str, list] = {}
    for k in keys:
        by_family.setdefault(family(inits, k[0]), []).append(k)
    colours = {}
    for fam, members in by_family.items():
        cmap = plt.get_cmap(CMAPS.get(fam, "YlOrBr"))
        shades = [0.7] if len(members) == 1 else np.linspace(0.5, 0.95, len(members))
        colours.update({k: cmap(x) for k, x in zip(members, shades)})
    styles = {loss: LINESTYLES[i % len(LINESTYLES)] for i, loss in enumerate(sorted(df["loss"].unique()))}
    return colours, styles


def _facets(df: pd.DataFrame, inits: dict[str, InitSpec]) -> list[tuple[str, pd.DataFrame]]:
    """One panel per architecture (``train.models``), else per initialiser family (or per
    normalisation, where one family is all there is)."""
    if "model" in df.columns and df["model"].nunique() > 1:
        return [(f"model: {m}", df[df["model"] == m]) for m in dict.fromkeys(df["model"])]
    fams = df["init"].map(lambda i: family(inits, i))
    if fams.nunique() > 1:
        return [(f, df[fams == f]) for f in dict.fromkeys(fams)]
    if df["normalize"].nunique() > 1:
        return [(f"normalize: {n}", df[df["normalize"] == n]) for n in dict.fromkeys(df["normalize"])]
    return [("", df)]


def _label(run, df: pd.DataFrame) -> str:
    """The parts of a run's variant that vary in ``df``."""
    parts = [str(getattr(run, c)) for c in ("init", "loss", "normalize") if df[c].nunique() > 1]
    if df["lr"].nunique() > 1:
        parts.append(f"lr {run.lr:g}")
    return " · ".join(parts) or run.variant


def _seed_mean(curves: dict, runs, key: str, n: int | None) -> np.ndarray:
    """A variant's curve: the mean over its seeds' runs (up to the shortest, e.g. a diverged one)."""
    cs = [_curve(curves, r, key)[:n] for r in runs]
    length = min(len(c) for c in cs)
    return np.nanmean(np.stack([c[:length] for c in cs]), axis=0) if length else np.array([])


def _curve_panels(
    df, curves, inits, title: str, xlabel: str, n: int | None, logx: bool, out: Path, n_classes: int | None = None
) -> None:
    """One line per variant (the mean over its seeds), a panel per family (``_facets``); with
    ``n_classes`` and only cross-entropy losses, a dashed line at ln(classes), a uniform guess."""
    own = df[~df["reproduce"]]
    seeds = own.groupby("variant")["run_name"].agg(list)
    sub = own.drop_duplicates("variant").sort_values("variant")
    colours, styles = line_styles(sub, inits)
    panels = _facets(sub, inits)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False, sharey=True)
    for ax, (name, part) in zip(axes.flat, panels):
        for run in part.itertuples():
            c = _seed_mean(curves, seeds[run.variant], "step_loss", n)
            if len(c):
                ax.plot(
                    np.arange(1, len(c) + 1),
                    c,
                    color=colours[run.init, run.normalize, run.lr],
                    ls=styles[run.loss],
                    lw=1.2,
                    label=_label(run, sub),
                )
        if n_classes and set(sub["loss"]) <= set(CE_LOSSES):
            ax.axhline(np.log(n_classes), color="grey", ls="--", lw=0.8, label=f"ln {n_classes}: uniform guess")
        ax.set(title=name, xlabel=xlabel, yscale="log", xscale="log" if logx else "linear")
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("training loss (log scale)")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def fig_first_batches(df, curves, inits, n, out: Path) -> None:
    seeds = df["seed"].nunique()
    _curve_panels(
        df,
        curves,
        inits,
        f"training loss over the first {n} batches, mean over {seeds} seeds",
        "batch",
        n,
        False,
        out,
    )


def fig_loss_curves(df, curves, inits, title: str, out: Path, n_classes: int | None = None) -> None:
    _curve_panels(df, curves, inits, title, "optimiser step (log scale)", None, True, out, n_classes)


def fig_init_histograms(inits: dict[str, InitSpec], labels: list[str], shape: tuple[int, int], out: Path) -> None:
    """The first layer's initial weights (``shape``: fan-out, fan-in) under each initialiser."""
    cols = 5
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, label in zip(axes.flat, labels):
        spec = inits[label]
        w, b = torch.empty(*shape), torch.empty(shape[0])
        init_linear(w, b, spec.name, spec.args, spec.bias, torch.Generator().manual_seed(0))
        ax.hist(w.flatten().numpy(), bins=80, color=plt.get_cmap(CMAPS.get(family(inits, label), "YlOrBr"))(0.7))
        ax.set_title(f"{label} ({family(inits, label)})\nmean {w.mean():.3g}, std {w.std():.3g}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(labels) :]:
        ax.axis("off")
    fig.suptitle(f"initial weights of a {shape[1]} -> {shape[0]} layer, per initialiser (colour: its family)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def first_setting(df: pd.DataFrame, sp) -> pd.DataFrame:
    """The study's own runs of its first loss, normalisation and learning rate: one per init,
    model and seed (what the per-layer figures draw, so that a line is an init)."""
    st = sp.train
    return rows_where(df[~df["reproduce"]], loss=st.losses[0], normalize=st.normalize[0], lr=st.lr[0])


def fig_layers(df, diag, sp, title: str, out: Path) -> None:
    """Per architecture, at initialisation on the probe batch: the standard deviation of each
    hidden layer's activations, and the norm of the loss gradient of each layer's weights
    (Glorot & Bengio 2010, figures 6-7; He et al. 2015): one line per init, mean over seeds."""
    runs = first_setting(df, sp)
    d = diag[diag["point"] == "init"].merge(
        runs[["run_name", "init", *(["model"] if "model" in runs else [])]], on="run_name"
    )
    models = list(dict.fromkeys(d["model"])) if "model" in d else [""]
    colours, _ = line_styles(runs.drop_duplicates("init"), sp.inits)
    fig, axes = plt.subplots(2, len(models), figsize=(max(8.0, 5.4 * len(models)), 6.4), squeeze=False)
    for j, m in enumerate(models):
        part = d[d["model"] == m] if m else d
        for init, g in part.groupby("init", sort=False):
            mean = g.groupby("layer")[["act_std", "grad_norm"]].mean()
            key = next(k for k in colours if k[0] == init)
            axes[0, j].plot(mean.index, mean["act_std"], "o-", ms=3, color=colours[key], label=init)
            axes[1, j].plot(mean.index, mean["grad_norm"], "o-", ms=3, color=colours[key], label=init)
        axes[0, j].set(title=f"model: {m}" if m else "", yscale="log", ylabel="activation std (log)")
        axes[1, j].set(xlabel="layer (1 = first hidden)", yscale="log", ylabel="gradient norm ||dL/dW|| (log)")
        axes[0, j].legend(fontsize=7, ncol=2 if part["init"].nunique() > 7 else 1)
        for ax in axes[:, j]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def fig_saturation(df, diag, sp, out: Path) -> None:
    """Each hidden layer over training, on the probe batch (Glorot & Bengio 2010, figures 2-4): the
    mean activation with a band of one standard deviation (top row), and the share of saturated
    units, |tanh| > 0.97 or sigmoid within 0.03 of 0 or 1 (bottom row); a column per
    architecture and init, mean over seeds."""
    runs = first_setting(df, sp)
    d = diag.merge(runs[["run_name", "init", *(["model"] if "model" in runs else [])]], on="run_name")
    d = d[d["saturated"].notna()]
    keys = list(dict.fromkeys(zip(d["model"] if "model" in d else [""] * len(d), d["init"])))
    fig, axes = plt.subplots(2, len(keys), figsize=(4.2 * len(keys), 6.4), squeeze=False, sharex=True)
    cmap = plt.get_cmap("viridis")
    for j, (m, init) in enumerate(keys):
        g = d[(d["init"] == init) & ((d["model"] == m) if m else True)]
        mean = g.groupby(["layer", "step"])[["act_mean", "act_std", "saturated"]].mean()
        layers = sorted(g["layer"].unique())
        for i, layer in enumerate(layers):
            c = cmap(i / max(1, len(layers) - 1))
            part = mean.loc[layer]
            axes[0, j].plot(part.index, part["act_mean"], "o-", ms=3, color=c, label=f"layer {layer}")
            axes[0, j].fill_between(
                part.index,
                part["act_mean"] - part["act_std"],
                part["act_mean"] + part["act_std"],
                color=c,
                alpha=0.12,
            )
            axes[1, j].plot(part.index, part["saturated"], "o-", ms=3, color=c, label=f"layer {layer}")
        axes[0, j].set(title=f"{m} · {init}" if m else init)
        axes[1, j].set(xlabel="optimiser step", ylim=(-0.02, 1.02))
        axes[0, j].legend(fontsize=7)
    axes[0, 0].set_ylabel("activation mean ± std")
    axes[1, 0].set_ylabel("share of saturated units")
    fig.suptitle(f"hidden layers over training (probe batch), mean over {df['seed'].nunique()} seeds")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
