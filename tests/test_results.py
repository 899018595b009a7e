"""Evaluation summaries and the report, on small inputs: what a reader of the metrics and the report sees."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from initlab.core.io import read_json
from initlab.params.words import load_words
from initlab.report.render import render
from initlab.results.evaluate import evaluate_study, summarise, write_evaluation
from initlab.training.save import save_results
from initlab.training.study import train_study


def table(rows: list[tuple[str, int, float, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["variant", "seed", "test_accuracy", "diverged"])


def test_summarise_ranks_variant_means_and_leaves_out_diverged_variants():
    df = table(
        [
            ("a", 0, 0.9, 0),
            ("a", 1, 0.7, 0),  # mean 0.8
            ("b", 0, 0.6, 0),
            ("b", 1, 0.6, 0),  # mean 0.6
            ("c", 0, np.nan, 1),
            ("c", 1, np.nan, 1),
        ]
    )  # diverged: no accuracy
    assert summarise(df) == {
        "best_test_acc": 0.8,
        "mean_test_acc": 0.7,
        "worst_test_acc": 0.6,
        "diverged": round(2 / 6, 4),
    }


def test_summarise_of_a_study_where_every_run_diverged_has_no_accuracies():
    assert summarise(table([("a", 0, np.nan, 1)])) == {"diverged": 1.0}


@pytest.fixture(scope="module")
def line_results(small_root, params):
    """line with its reproduction (seed 000's bad start), default init as the remedy, 2 seeds."""
    sp = params.studies["line"]
    sp = sp.model_copy(update={"train": sp.train.model_copy(update={"inits": ["default"], "seeds": [0, 1]})})
    p = params.model_copy(update={"studies": {**params.studies, "line": sp}})
    out = small_root.trained("line")
    out.mkdir(parents=True, exist_ok=True)
    save_results(train_study(p, "line", small_root, show_progress=False), out)
    write_evaluation("line", evaluate_study("line", small_root), small_root)
    return p, small_root


def test_report_shows_the_seed_figure_beside_ours_and_each_variant_once_with_its_verdict(line_results):
    p, paths = line_results
    text = render(p, load_words(REPO / "report.yaml", list(p.studies)), paths, studies=("line",))
    df = pd.read_csv(paths.evaluated("line"))
    mse = df[df["reproduce"] & (df["loss"] == "mse")]["train_accuracy"].mean()
    assert f"| 0.575 | {mse:.3f} |" in text  # the seed's figure, then ours, read from the runs
    rows = [r for r in text.splitlines() if r.startswith("| `")]
    shown = [v.strip(" `") for r in rows for v in r.split("|")[1].split(",")]
    assert sorted(shown) == sorted(df["variant"].unique())  # every variant once (identical rows grouped)
    vt = pd.read_csv(paths.variants("line"))
    own = vt[~vt["reproduce"]]
    best = own.loc[own["verdict"] == "best", "variant"].item()
    assert rows[0].split("|")[1].strip().startswith(f"`{best}`") and rows[0].split("|")[3].strip() == "best"
    assert f"Best on held-out test accuracy: `{best}`" in text  # the summary opens the section
    worse = own[own["verdict"] == "worse"]
    assert all(f"`{v}`" in text for v in worse["variant"])
    assert "![line training loss](figures/line_loss.png)" in text
    assert (paths.reports / "figures" / "line_loss.png").stat().st_size > 10_000


def test_metrics_file_agrees_with_the_evaluation_table(line_results):
    _, paths = line_results
    m = read_json(paths.metrics("line"))
    means = pd.read_csv(paths.evaluated("line")).groupby("variant")["test_accuracy"].mean()
    assert m["best_test_acc"] == round(means.max(), 4) and m["worst_test_acc"] == round(means.min(), 4)
    assert math.isclose(m["mean_test_acc"], means.mean(), abs_tol=1e-4)


def test_compare_rows_show_the_mean_a_percentage_or_the_verdicts_of_the_matching_runs():
    from initlab.params.words import CompareRow
    from initlab.report.tables import compare_row

    df = pd.DataFrame(
        {
            "init": ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"],
            "seed": [0, 1, 2] * 3 + [0],
            "diverged": 0,
            "loss": ["ce"] * 9 + ["mse"],
            "val_accuracy": [0.80, 0.70, 0.60, 0.81, 0.72, 0.62, 0.30, 0.31, 0.29, 0.99],
        }
    )
    row = {"source": "001", "claim": "c", "theirs": "t", "metric": "val_accuracy", "where": {"loss": "ce"}}
    assert compare_row(CompareRow(**row, digits=2), df) == "| 001 | c | t | 0.57 |"
    assert compare_row(CompareRow(**row, show="percent", digits=1), df) == "| 001 | c | t | 57.2 % |"
    ranked = compare_row(CompareRow(**row, show="rank", digits=0, label="accuracy"), df)
    # b beats a on every seed by 1-2 points while seeds spread by 10: paired over seeds, a is worse
    # (its interval overlaps b's; an unpaired look would call them a tie)
    # three seeds cannot push a corrected p below 0.005: both "worse" verdicts are marked marginal
    assert ranked == (
        "| 001 | c | t | top by accuracy (the highest mean and those indistinguishable from it, "
        "paired t-test, Holm): b 72 %; worse: 2; marginal (0.005 <= p < 0.1): a, c |"
    )
    assert compare_row(CompareRow(**{**row, "where": {"loss": "l1"}}), df) is None  # no such runs: no row


def test_intervals_paired_verdicts_and_holm_correction():
    from scipy import stats as sps

    from initlab.results.stats import holm, interval, verdicts

    x = np.array([0.80, 0.70, 0.60])
    low, high = interval(x)
    half = sps.t.ppf(0.975, 2) * x.std(ddof=1) / np.sqrt(3)
    assert low == pytest.approx(0.7 - half) and high == pytest.approx(0.7 + half)
    assert interval(np.array([0.5, 0.5])) == (0.5, 0.5) and all(np.isnan(interval(np.array([0.5]))))
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3p, then max(2p, prev), then p
    df = pd.DataFrame(
        {
            "variant": ["a"] * 3 + ["b"] * 3 + ["z"] * 3 + ["same"] * 3,
            "seed": [0, 1, 2] * 4,
            "diverged": [0] * 6 + [1] * 3 + [0] * 3,
            "acc": [0.80, 0.70, 0.60, 0.81, 0.72, 0.62, np.nan, np.nan, np.nan, 0.81, 0.72, 0.62],
        }
    )
    v = verdicts(df, "acc").set_index("variant")
    # a trails b on every seed (raw p 0.038), but two comparisons have p-values: Holm doubles it
    assert v.loc["b", "verdict"] == "best" and v.loc["a", "verdict"] == "indistinguishable"
    assert v.loc["same", "verdict"] == "indistinguishable" and v.loc["same", "p_vs_best"] == 1.0
    assert v.loc["z", "verdict"] == "diverged"
    raw = sps.ttest_rel([0.80, 0.70, 0.60], [0.81, 0.72, 0.62]).pvalue
    assert v.loc["a", "p_vs_best"] == pytest.approx(min(1, 2 * raw))  # two comparisons with a p-value


def test_a_study_of_several_models_judges_each_variant_within_its_model():
    """With train.models, the best of each architecture is 'best'; a variant is not called worse
    for losing to a variant of another architecture."""
    from initlab.params.variants import Variant
    from initlab.results.evaluate import variant_stats

    rows = []
    for model, base in (("deep", 0.10), ("shallow", 0.80)):
        for init, shift in (("a", 0.05), ("b", 0.0)):
            for seed in range(4):
                v = Variant("s", init, "cross_entropy", "none", 0.01, seed, model=model)
                assert v.name == f"{init}-cross_entropy-none-lr0.01-{model}"
                rows.append(
                    {
                        "run_name": v.run_name,
                        "variant": v.name,
                        "model": model,
                        "init": init,
                        "loss": "cross_entropy",
                        "normalize": "none",
                        "lr": 0.01,
                        "seed": seed,
                        "reproduce": False,
                        "diverged": 0,
                        "val_accuracy": np.nan,
                        "test_accuracy": base + shift + 0.001 * seed * (1 if init == "a" else -1),
                    }
                )
    vt = variant_stats(pd.DataFrame(rows)).set_index("variant")
    assert vt.loc["a-cross_entropy-none-lr0.01-deep", "verdict"] == "best"
    assert vt.loc["a-cross_entropy-none-lr0.01-shallow", "verdict"] == "best"
    assert vt.loc["b-cross_entropy-none-lr0.01-deep", "verdict"] == "worse"
    assert list(vt["model"].unique()) == ["deep", "shallow"]
