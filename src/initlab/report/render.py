"""The markdown comparison report (``initlab report``): a header, the sources' figures beside ours,
and per evaluated study a list of section builders, each a function of the study's params, its
words (``report.yaml``) and its files."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from initlab.core.io import atomic_path, read_csv, read_json, read_npz
from initlab.params.paths import Paths
from initlab.params.schema import Params, StudyParams
from initlab.params.sources import TorchvisionSource
from initlab.params.words import ReportWords, StudyWords
from initlab.report.boundaries import fig_boundaries, fig_decision_boundary
from initlab.report.figures import (
    fig_first_batches,
    fig_init_histograms,
    fig_layers,
    fig_loss_curves,
    fig_saturation,
)
from initlab.report.prose import profile_note, summary
from initlab.report.tables import markdown_table, protocol_table, seed_comparison, variant_table

HEADER = [
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


@dataclass
class Section:
    """What one study's section is built from: its params, its words and the files its stages wrote."""

    params: Params
    paths: Paths
    figs: Path  # where figures are written; the markdown links them as ``figures/<name>``
    study: str
    sp: StudyParams
    words: StudyWords  # its title, question and sources' figures (report.yaml)
    df: pd.DataFrame  # evaluated runs, with each run's architecture
    s: dict  # the prepared data's summary
    curves: dict
    vt: pd.DataFrame  # the variants table
    arch: dict  # the first run's architecture
    diag: pd.DataFrame  # per-layer diagnostics of every run


def splits(c: Section) -> list[str]:
    """The title, the splits' sizes and baseline, an ECG study's beats, and the profile it ran."""
    s = c.s
    sizes = s["sizes"]
    md = [f"## {c.words.title}", ""]
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
    note = profile_note(c.study, c.sp)
    return md + (["", note, ""] if note else [""])


def variants(c: Section) -> list[str]:
    """The summary in sentences and the variants table; one of each per architecture where the
    study trains several, each judged against its own best."""
    sp, s, vt, question = c.sp, c.s, c.vt, c.words.question
    final_loss = c.df.groupby("variant")["train_loss"].mean()
    own = vt[~vt["reproduce"]]
    if not sp.train.models:
        return [
            summary(question, vt, s["majority_baseline_test"], final_loss, s["n_classes"]),
            "",
            markdown_table(variant_table(own, "test accuracy [95 % CI]")),
            "",
        ]
    md = [f"*{question}*", ""] if question else []
    for m, part in own.groupby("model", sort=False):
        spec = sp.train.models[m]
        head = f"**Model `{m}`** ({len(spec.hidden)} hidden layers of {spec.hidden[0]}, {spec.activation}). "
        md += [
            head + summary("", part, s["majority_baseline_test"], final_loss, s["n_classes"]),
            "",
            markdown_table(variant_table(part, "test accuracy [95 % CI]")),
            "",
        ]
    return md


def reproduction(c: Section) -> list[str]:
    """The seed's own setup (``reproduce-`` rows): beside the proper measurement where its
    protocol differs from ours, else as a table of its own."""
    vt = c.vt
    if not vt["reproduce"].any():
        return []
    rp = c.sp.train.reproduce
    if rp.validate_with_dropout or rp.split == "shuffle":
        lines, sentence = protocol_table(vt)
        return [
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
    return [
        "Rows named `reproduce-…` run the seed's own setup"
        + (" on all data, so their test accuracy is not held out" if rp.all_data else "")
        + ":",
        "",
        markdown_table(variant_table(vt[vt["reproduce"]], "validation accuracy")),
        "",
    ]


def loss_figure(c: Section) -> list[str]:
    """Training loss curves, mean over seeds (against ln(classes) where the study trains several
    architectures)."""
    seeds = c.df["seed"].nunique()
    fig_loss_curves(
        c.df,
        c.curves,
        c.sp.inits,
        f"{c.study}: training loss, mean over {seeds} seeds",
        c.figs / f"{c.study}_loss.png",
        *([c.s["n_classes"]] if c.sp.train.models else []),
    )
    return [f"![{c.study} training loss](figures/{c.study}_loss.png)", ""]


def architectures_figures(c: Section) -> list[str]:
    """Several architectures: the loss curves, and saturation over training unless all are ReLU."""
    md = loss_figure(c)
    if any(m.activation != "relu" for m in c.sp.train.models.values()):
        fig_saturation(c.df, c.diag, c.sp, c.figs / f"{c.study}_saturation.png")
        md += [f"![{c.study} saturation over training](figures/{c.study}_saturation.png)", ""]
    return md


def image_figures(c: Section) -> list[str]:
    """Images: the loss over the first batches, the initial weights, and the best variant's
    accuracy per class."""
    df, sp, study, figs = c.df, c.sp, c.study, c.figs
    arch = c.arch
    n = c.params.report.first_batches
    fig_first_batches(df, c.curves, sp.inits, n, figs / f"{study}_first_batches.png")
    labels = list(dict.fromkeys(df["init"]))
    fig_init_histograms(
        sp.inits, labels, (arch["sizes"][1], arch["sizes"][0]), figs / f"{study}_init_histograms.png"
    )
    md = [
        f"![loss over the first {n} batches](figures/{study}_first_batches.png)",
        "",
        f"![initial weights](figures/{study}_init_histograms.png)",
        "",
    ]
    cls = [col for col in df.columns if col.startswith("test_accuracy_class_")]
    if cls:
        best = df.groupby("variant")["test_accuracy"].mean().idxmax()
        pc = df[df["variant"] == best][cls].mean()
        from initlab.data.raw import FASHION_MNIST_CLASSES

        names = FASHION_MNIST_CLASSES if sp.data.dataset == "FashionMNIST" else None

        md += [
            f"Per-class test accuracy of the best variant (`{best}`): "
            + ", ".join(
                f"{names[int(col.rsplit('_', 1)[1])] if names else col.rsplit('_', 1)[1]} {v:.3f}"
                for col, v in pc.items()
            ),
            "",
        ]
    return md


def boundaries_figure(c: Section) -> list[str]:
    """Two features, no reproduction: a decision-boundary panel per init."""
    fig_boundaries(c.df, c.sp, c.study, c.paths, c.figs / f"{c.study}_boundary.png")
    return [f"![{c.study} decision boundaries](figures/{c.study}_boundary.png)", ""]


def boundary_figure(c: Section) -> list[str]:
    """Two features with the seed's reproduction: one decision boundary."""
    fig_decision_boundary(c.df, c.study, c.paths, c.figs / f"{c.study}_boundary.png")
    return [f"![{c.study} decision boundary](figures/{c.study}_boundary.png)", ""]


# The study's figures: the first whose test its data passes.
FIGURES: list[tuple[Callable[[Section], bool], Callable[[Section], list[str]]]] = [
    (lambda c: bool(c.sp.train.models), architectures_figures),
    (lambda c: isinstance(c.sp.data, TorchvisionSource), image_figures),
    (lambda c: c.arch["sizes"][0] == 2 and not c.df["reproduce"].any(), boundaries_figure),
    (lambda c: c.arch["sizes"][0] == 2, boundary_figure),
    (lambda c: True, loss_figure),
]


def figures(c: Section) -> list[str]:
    """The figures its data calls for (``FIGURES``)."""
    return next(build for applies, build in FIGURES if applies(c))(c)


def layers(c: Section) -> list[str]:
    """Two hidden layers or more: activations and gradients per layer at initialisation."""
    if len(c.arch["sizes"]) <= 3:  # a per-layer picture says something from two hidden layers
        return []
    study, sp = c.study, c.sp
    fig_layers(
        c.df,
        c.diag,
        sp,
        f"{study}: per layer at initialisation (probe batch of "
        f"{sp.train.diagnostics.probe_rows} training rows), mean over seeds",
        c.figs / f"{study}_layers.png",
    )
    return [
        f"![{study} activations and gradients per layer](figures/{study}_layers.png)",
        "",
        "Per-layer diagnostics of every run (init, chosen steps, end): "
        f"`pipeline/train/{study}/diagnostics.csv`, and each MLflow run's `diag/...` metrics "
        "(step = layer).",
        "",
    ]


# One study's section, in order.
SECTIONS: list[Callable[[Section], list[str]]] = [splits, variants, reproduction, figures, layers]


def render(params: Params, words: ReportWords, paths: Paths, studies: tuple[str, ...] | None = None) -> str:
    """Every study of ``params`` (or ``studies``) that has been evaluated: one section each, titled
    by ``words``, built by ``SECTIONS``, its figures chosen by its data (``FIGURES``: several
    architectures: loss and saturation; images: the first batches and the initial weights; two
    features: a decision boundary; otherwise: training loss curves)."""
    studies = tuple(params.studies) if studies is None else studies
    figs = paths.reports / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    frames, summaries = {}, {}
    for study in studies:
        if paths.evaluated(study).exists():
            df = read_csv(paths.evaluated(study), ("run_name", "variant", "test_accuracy"))
            df = df.merge(
                read_csv(paths.trained(study) / "runs.csv", ("run_name", "arch"))[["run_name", "arch"]],
                on="run_name",
            )
            frames[study] = df
            summaries[study] = read_json(paths.prepared(study).with_suffix(".json"))
    md = [*HEADER, *seed_comparison(words, frames), ""]
    for study, df in frames.items():
        curves = read_npz(paths.trained(study) / "curves.npz")
        vt = read_csv(paths.variants(study), ("variant", "mean", "verdict"))
        arch = json.loads(df["arch"].iloc[0])
        diag = read_csv(paths.trained(study) / "diagnostics.csv", ("run_name", "point", "layer"))
        sp, w = params.study(study), words.studies[study]
        c = Section(params, paths, figs, study, sp, w, df, summaries[study], curves, vt, arch, diag)
        for build in SECTIONS:
            md += build(c)
    return "\n".join(md) + "\n"


def write_report(params: Params, words: ReportWords, paths: Paths) -> Path:
    text = render(params, words, paths)
    out = paths.reports / "report.md"
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return out
