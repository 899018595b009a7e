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
from matplotlib.ticker import MaxNLocator  # noqa: E402

from initlab.core.io import atomic_path, load_weights, read_csv, read_json, read_npz  # noqa: E402
from initlab.nets.models import build_module  # noqa: E402
from initlab.nets.registry import init_linear  # noqa: E402
from initlab.params.paths import Paths  # noqa: E402
from initlab.params.schema import CompareRow, InitSpec, Params, TorchvisionSource


def _pm(mean: float, std: float, digits: int = 4) -> str:
    if np.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {0.0 if np.isnan(std) else std:.{digits}f}"


def _ci(mean: float, low: float, high: float, digits: int = 3) -> str:
    """``0.873 [0.861, 0.885]``: a mean and its 95 % interval ("—" where there is none)."""
    if not np.isfinite(mean):
        return "—"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _ci_of(r, prefix: str = "") -> str:
    """``_ci`` of a variants-table row: its ``mean`` (or ``test_mean`` with ``prefix="test_"``)."""
    return _ci(r[f"{prefix}mean"], r[f"{prefix}ci_low"], r[f"{prefix}ci_high"])


def _verdict(r) -> str:
    from initlab.results.stats import marginal

    if not np.isfinite(r["p_vs_best"]):
        return r["verdict"]
    return f"{r['verdict']}{', marginal' if marginal(r['p_vs_best']) else ''} (p = {r['p_vs_best']:.2g})"


def variant_table(vt: pd.DataFrame, label: str) -> pd.DataFrame:
    """The variants of ``vt`` (``pipeline/evaluate/<study>_variants.csv``), best first; variants
    whose figures print the same share one row."""
    rows = []
    order = vt.assign(_best=vt["verdict"] != "best")
    for r in order.sort_values(
        ["_best", "mean", "variant"], ascending=[True, False, True], na_position="last"
    ).to_dict("records"):
        rows.append(
            {
                "variants": r["variant"],
                label: _ci_of(r),
                "verdict (paired t-test vs best, Holm)": _verdict(r),
                "diverged": f"{r['diverged']}/{r['n']}" if r["diverged"] else "no",
                "seeds": r["n"],
            }
        )
    table = pd.DataFrame(rows)
    same = [c for c in table.columns if c != "variants"]
    inits = dict(zip(vt["variant"], vt["init"]))
    grouped = table.groupby(same, sort=False, dropna=False)["variants"].agg(lambda g: _names(list(g), inits))
    return grouped.reset_index()[["variants", *same]]


def _names(variants: list[str], inits: dict[str, str]) -> str:
    """``a-bce-none-lr2``, ``a-mse-none-lr2``, ``b-bce-none-lr2`` as "`a` (bce-none-lr2, mse-none-lr2),
    `b` (bce-none-lr2)": a group of many variants stays readable."""
    if len(variants) == 1:
        return f"`{variants[0]}`"
    by_init: dict[str, list[str]] = {}
    for v in variants:
        init = inits[v]
        by_init.setdefault(init, []).append(v.removeprefix(f"{init}-") if v.startswith(f"{init}-") else v)
    return ", ".join(f"`{i}` ({', '.join(rest)})" for i, rest in by_init.items())


def _markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, disable_numparse=True)  # "0.990" stays "0.990"


def summary(
    sp,
    vt: pd.DataFrame,
    baseline: float,
    final_loss: pd.Series | None = None,
    n_classes: int = 2,
    question: bool = True,
) -> str:
    """Three to five sentences from the numbers: the question, the answer, the evidence. With
    ``final_loss`` (per variant, its last epoch's training loss), the variants at chance say it,
    beside ln(classes), the loss of a model that has learnt nothing."""
    own = vt[~vt["reproduce"]]
    best = own[own["verdict"] == "best"].iloc[0]
    tie = own[own["verdict"] == "indistinguishable"]
    worse = own[own["verdict"] == "worse"]
    chance = own[own["ci_high"].fillna(own["mean"]) <= baseline + 0.02]
    diverged = own[own["verdict"] == "diverged"]
    out = [f"*{sp.question}*"] if sp.question and question else []
    if len(chance) == len(own):
        return " ".join(
            [
                *out,
                f"No variant learns: every one sits at chance (the majority class, {baseline:.3f}; "
                f"95 % intervals at most {baseline + 0.02:.3f} over {best['n']} seeds).",
            ]
        )
    out.append(
        f"Best on held-out test accuracy: `{best['variant']}`, "
        f"{_ci_of(best)} (mean [95 % interval] over {best['n']} seeds)."
    )
    if len(tie):
        names = ", ".join(f"`{v}`" for v in tie["variant"].head(4)) + (" …" if len(tie) > 4 else "")
        out.append(
            f"{len(tie)} other variant{'s' if len(tie) > 1 else ''} cannot be told apart from it "
            f"(paired t-test over seeds, Holm-corrected, p >= 0.05): {names}."
        )
    else:
        out.append("Every other variant is worse than it (paired t-test over seeds, Holm-corrected, p < 0.05).")
    if len(worse):
        w = worse.loc[worse["mean"].idxmin()]
        sit = "sits" if len(chance) == 1 else "sit"
        at_chance = f"; {len(chance)} {sit} at chance (the majority class: {baseline:.3f})" if len(chance) else ""
        ce = chance[chance["loss"].isin(CE_LOSSES)]  # their loss, beside a uniform guess's: ln(classes)
        if len(ce) and final_loss is not None:
            at_chance += ": " + ", ".join(
                f"`{v}` (final training loss {final_loss.get(v, np.nan):.3f})" for v in ce["variant"].head(4)
            )
            at_chance += f"; ln {n_classes} = {np.log(n_classes):.3f} is the cross-entropy of a uniform guess"
        verb = "is" if len(worse) == 1 else "are"
        out.append(f"{len(worse)} {verb} worse, down to `{w['variant']}` at {_ci_of(w)}{at_chance}.")
    if len(diverged):
        names = ", ".join(f"`{v}`" for v in diverged["variant"])
        out.append(f"{len(diverged)} diverged on every seed: {names}.")
    from initlab.results.stats import MARGINAL, marginal

    edge = own[[marginal(p) for p in own["p_vs_best"]]]
    if len(edge):
        names = ", ".join(f"`{v}` ({r})" for v, r in zip(edge["variant"].head(4), edge["verdict"].head(4)))
        out.append(
            f"{len(edge)} of these verdicts {'is' if len(edge) == 1 else 'are'} marginal "
            f"({MARGINAL[0]} <= p < {MARGINAL[1]}): another CPU's roundings can flip "
            f"{'it' if len(edge) == 1 else 'them'}, so read {'it' if len(edge) == 1 else 'them'} "
            f"as undecided: {names}{' …' if len(edge) > 4 else ''}."
        )
    return " ".join(out)


CE_LOSSES = ("cross_entropy", "bce", "bce_logits")  # losses whose value at a uniform guess is ln(classes)


def protocol_table(vt: pd.DataFrame) -> tuple[list[str], str]:
    """Per init, the seed's protocol figure (its ``reproduce-`` rows: its split, validation with
    dropout on) beside the proper one of the same models (eval mode, held-out test set) and the
    study's own run of that init (stratified split, eval mode, test set); and one sentence."""
    rep = vt[vt["reproduce"]]
    own = vt[~vt["reproduce"]].set_index(["init", "loss"])
    lines = [
        "| init | seed's protocol: validation, dropout on | same models: test, eval mode | "
        "our run: test, eval mode | gap (pp) |",
        "|---|---|---|---|---|",
    ]
    gaps = {}
    for r in rep.to_dict("records"):
        o = own.loc[(r["init"], r["loss"])] if (r["init"], r["loss"]) in own.index else None
        gap = 100 * (r["mean"] - r["test_mean"])
        gaps[r["init"]] = gap
        ours = _ci_of(o, "test_") if o is not None else "—"
        lines.append(f"| {r['init']} | {_ci_of(r)} | {_ci_of(r, 'test_')} | {ours} | {gap:+.1f} |")
    trained = {k: g for k, g in gaps.items() if np.isfinite(g)}
    worst = max(trained, key=lambda k: abs(trained[k])) if trained else None
    sentence = (
        f"Measured as the seed measures it (dropout on, validation rows of its own unstratified "
        f"split), an init's figure is {np.mean(list(trained.values())):+.1f} percentage points from the "
        f"proper one of the same models (eval mode, held-out test set) on average; the gap is largest "
        f"for `{worst}` ({trained[worst]:+.1f} pp)."
        if worst
        else ""
    )
    return lines, sentence


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


def _first_setting(df: pd.DataFrame, sp) -> pd.DataFrame:
    """The study's own runs of its first loss, normalisation and learning rate: one per init,
    model and seed (what the per-layer figures draw, so that a line is an init)."""
    st = sp.train
    return _one(df[~df["reproduce"]], loss=st.losses[0], normalize=st.normalize[0], lr=st.lr[0])


def fig_layers(df, diag, sp, title: str, out: Path) -> None:
    """Per architecture, at initialisation on the probe batch: the standard deviation of each
    hidden layer's activations, and the norm of the loss gradient of each layer's weights
    (Glorot & Bengio 2010, figures 6-7; He et al. 2015): one line per init, mean over seeds."""
    runs = _first_setting(df, sp)
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
    runs = _first_setting(df, sp)
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


def fig_boundaries(df, sp, study: str, paths: Paths, out: Path) -> None:
    """The decision boundary of each init (its first seed, in the study's first setting), a panel
    each, over every point of the study (train, validation and test)."""
    d = read_npz(paths.prepared(study), study=study)
    x = np.concatenate([d["x_train"], d["x_val"], d["x_test"]])
    y = np.concatenate([d["y_train"], d["y_val"], d["y_test"]])
    runs = _first_setting(df, sp)
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


def profile_note(study: str, sp) -> str:
    """Which of the study's profiles it ran, and the command for each other one."""
    if not sp.profiles:
        return ""
    raw = sp.model_dump()
    ran = [n for n in sp.profiles if sp.with_profile(n, raw) == raw]  # setting it changes nothing
    out = [f"Profile: **{ran[0] if ran else 'default'}** (the one these numbers come from)."]
    for name, overrides in sp.profiles.items():
        if name not in ran:
            sets = " ".join(f"-S 'studies.{study}.{k}={'null' if v is None else v}'" for k, v in overrides.items())
            out.append(f"Its `{name}` profile: `dvc exp run {sets}`.")
    return " ".join(out)


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
    if row.show == "rank":  # decided by paired tests over seeds, not by ranking means
        from initlab.results.stats import verdicts

        v = verdicts(r.assign(variant=r[row.rank_by].astype(str)), row.metric).set_index("variant")
        fmt = lambda k: f"{k} {100 * v.loc[k, 'mean']:.{row.digits}f} %"  # noqa: E731
        from initlab.results.stats import MARGINAL, marginal

        top = v[v["verdict"].isin(["best", "indistinguishable"])].sort_values("mean", ascending=False)
        edge = [k for k in v.index if marginal(v.loc[k, "p_vs_best"])]
        # The top group, not its first place: which of its members leads moves with the CPU's roundings.
        ours = (
            f"top by {row.label or row.metric} (the highest mean and those indistinguishable from it, "
            f"paired t-test, Holm): {', '.join(map(fmt, top.index))}; "
            f"worse: {int((v['verdict'] == 'worse').sum())}"
            + (f"; marginal ({MARGINAL[0]} <= p < {MARGINAL[1]}): {', '.join(edge)}" if edge else "")
        )
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
            df = df.merge(
                read_csv(paths.trained(study) / "runs.csv", ("run_name", "arch"))[["run_name", "arch"]],
                on="run_name",
            )
            frames[study] = df
            summaries[study] = read_json(paths.prepared(study).with_suffix(".json"))
    md += [
        "# initlab report",
        "",
        "Every number below was produced by `dvc repro` from `params.yaml`; accuracies are on "
        "held-out test splits unless a row says otherwise, as the mean over seeds and its 95 % "
        "interval (Student t). Which variants are best is decided by paired t-tests over seeds "
        "against the study's best (Holm-corrected), not by ranking means.",
        "",
        "## The seeds' figures beside ours",
        "",
    ]
    md += seed_comparison(params, frames) + [""]
    for study, df in frames.items():
        s = summaries[study]
        curves = read_npz(paths.trained(study) / "curves.npz")
        sp = params.study(study)
        md += [f"## {sp.title}", ""]
        sizes = s["sizes"]
        md.append(
            f"Splits: train {sizes['train']}, validation {sizes['val']}, test {sizes['test']}"
            f"; majority-class baseline on test: {s['majority_baseline_test']:.3f}."
        )
        if "beats" in s:  # an ECG study
            md.append(
                f"{s['beats']} beats, mean {s['bpm_mean']} ± {s['bpm_std']} bpm; label = bpm > "
                f"{s['threshold_bpm']:.2f} (the training split's median unless set); class "
                f"balance (0/1) train {s['class_balance']['train']}, test "
                f"{s['class_balance']['test']}."
            )
        vt = read_csv(paths.variants(study), ("variant", "mean", "verdict"))
        note = profile_note(study, sp)
        md += ["", note, ""] if note else [""]
        final_loss = df.groupby("variant")["train_loss"].mean()
        own = vt[~vt["reproduce"]]
        if sp.train.models:  # one summary and table per architecture, each judged against its best
            md += [f"*{sp.question}*", ""] if sp.question else []
            for m, part in own.groupby("model", sort=False):
                spec = sp.train.models[m]
                head = (
                    f"**Model `{m}`** ({len(spec.hidden)} hidden layers of {spec.hidden[0]}, {spec.activation}). "
                )
                md += [
                    head + summary(sp, part, s["majority_baseline_test"], final_loss, s["n_classes"], False),
                    "",
                    _markdown(variant_table(part, "test accuracy [95 % CI]")),
                    "",
                ]
        else:
            md += [
                summary(sp, vt, s["majority_baseline_test"], final_loss, s["n_classes"]),
                "",
                _markdown(variant_table(own, "test accuracy [95 % CI]")),
                "",
            ]
        if vt["reproduce"].any():
            rp = sp.train.reproduce
            if rp.validate_with_dropout or rp.split == "shuffle":
                lines, sentence = protocol_table(vt)
                md += [
                    "The seed's own protocol (`reproduce-` rows: "
                    + ("its own unstratified split, " if rp.split == "shuffle" else "")
                    + ("validation with dropout on, " if rp.validate_with_dropout else "")
                    + "the seed's figure is validation accuracy), beside the proper measurement:",
                    "",
                    *lines,
                    "",
                    sentence,
                    "",
                ]
            else:
                md += [
                    "Rows named `reproduce-…` run the seed's own setup"
                    + (" on all data, so their test accuracy is not held out" if rp.all_data else "")
                    + ":",
                    "",
                    _markdown(variant_table(vt[vt["reproduce"]], "validation accuracy")),
                    "",
                ]
        arch = json.loads(df["arch"].iloc[0])
        diag = read_csv(paths.trained(study) / "diagnostics.csv", ("run_name", "point", "layer"))
        deep = len(arch["sizes"]) > 3  # two hidden layers or more: a per-layer picture says something
        if sp.train.models:
            seeds = df["seed"].nunique()
            fig_loss_curves(
                df,
                curves,
                sp.inits,
                f"{study}: training loss, mean over {seeds} seeds",
                figs / f"{study}_loss.png",
                s["n_classes"],
            )
            md += [f"![{study} training loss](figures/{study}_loss.png)", ""]
            if any(m.activation != "relu" for m in sp.train.models.values()):
                fig_saturation(df, diag, sp, figs / f"{study}_saturation.png")
                md += [f"![{study} saturation over training](figures/{study}_saturation.png)", ""]
        elif isinstance(sp.data, TorchvisionSource):
            n = params.report.first_batches
            fig_first_batches(df, curves, sp.inits, n, figs / f"{study}_first_batches.png")
            labels = list(dict.fromkeys(df["init"]))
            fig_init_histograms(
                sp.inits, labels, (arch["sizes"][1], arch["sizes"][0]), figs / f"{study}_init_histograms.png"
            )
            md += [
                f"![loss over the first {n} batches](figures/{study}_first_batches.png)",
                "",
                f"![initial weights](figures/{study}_init_histograms.png)",
                "",
            ]
            cls = [c for c in df.columns if c.startswith("test_accuracy_class_")]
            if cls:
                best = df.groupby("variant")["test_accuracy"].mean().idxmax()
                pc = df[df["variant"] == best][cls].mean()
                from initlab.data.datasets import FASHION_MNIST_CLASSES

                names = FASHION_MNIST_CLASSES if sp.data.dataset == "FashionMNIST" else None

                md += [
                    f"Per-class test accuracy of the best variant (`{best}`): "
                    + ", ".join(
                        f"{names[int(c.rsplit('_', 1)[1])] if names else c.rsplit('_', 1)[1]} {v:.3f}"
                        for c, v in pc.items()
                    ),
                    "",
                ]
        elif arch["sizes"][0] == 2 and not df["reproduce"].any():  # a panel per init
            fig_boundaries(df, sp, study, paths, figs / f"{study}_boundary.png")
            md += [f"![{study} decision boundaries](figures/{study}_boundary.png)", ""]
        elif arch["sizes"][0] == 2:
            fig_decision_boundary(df, study, paths, figs / f"{study}_boundary.png")
            md += [f"![{study} decision boundary](figures/{study}_boundary.png)", ""]
        else:
            seeds = df["seed"].nunique()
            fig_loss_curves(
                df,
                curves,
                sp.inits,
                f"{study}: training loss, mean over {seeds} seeds",
                figs / f"{study}_loss.png",
            )
            md += [f"![{study} training loss](figures/{study}_loss.png)", ""]
        if deep:
            fig_layers(
                df,
                diag,
                sp,
                f"{study}: per layer at initialisation (probe batch of "
                f"{sp.train.diagnostics.probe_rows} training rows), mean over seeds",
                figs / f"{study}_layers.png",
            )
            md += [
                f"![{study} activations and gradients per layer](figures/{study}_layers.png)",
                "",
                "Per-layer diagnostics of every run (init, chosen steps, end): "
                f"`pipeline/train/{study}/diagnostics.csv`, and each MLflow run's `diag/...` metrics "
                "(step = layer).",
                "",
            ]
    return "\n".join(md) + "\n"


def write_report(params: Params, paths: Paths) -> Path:
    text = render(params, paths)
    out = paths.reports / "report.md"
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return out
