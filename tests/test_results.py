"""Evaluation summaries and the report, on small inputs: what a reader of the metrics and the report sees."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from initlab.evaluate import evaluate_study, summarise, write_evaluation
from initlab.io import read_json
from initlab.report import render
from initlab.train import save_results, train_study


def table(rows: list[tuple[str, int, float, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["variant", "seed", "test_accuracy", "diverged"])


def test_summarise_ranks_variant_means_and_leaves_out_diverged_variants():
    df = table([("a", 0, 0.9, 0), ("a", 1, 0.7, 0),      # mean 0.8
                ("b", 0, 0.6, 0), ("b", 1, 0.6, 0),      # mean 0.6
                ("c", 0, np.nan, 1), ("c", 1, np.nan, 1)])  # diverged: no accuracy  # fmt: skip
    assert summarise(df) == {"best_test_acc": 0.8, "mean_test_acc": 0.7, "worst_test_acc": 0.6,
                             "diverged": round(2 / 6, 4)}  # fmt: skip


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


def test_report_shows_the_seed_figure_beside_ours_and_one_row_per_variant(line_results):
    p, paths = line_results
    text = render(p, paths, studies=("line",))
    df = pd.read_csv(paths.evaluated("line"))
    mse = df[df["reproduce"] & (df["loss"] == "mse")]["train_accuracy"].mean()
    assert f"| 0.575 | {mse:.3f} |" in text  # the seed's figure, then ours, read from the runs
    rows = [r for r in text.splitlines() if r.startswith("| ") and "-lr2 " in r]
    assert sorted(r.split("|")[1].strip() for r in rows) == sorted(df["variant"].unique())
    acc = [float(r.split("|")[-3].split("±")[0]) for r in rows]  # the test-accuracy column
    assert acc == sorted(acc, reverse=True)  # best first
    assert "![line training loss](figures/line_loss.png)" in text
    assert (paths.reports / "figures" / "line_loss.png").stat().st_size > 10_000


def test_metrics_file_agrees_with_the_evaluation_table(line_results):
    _, paths = line_results
    m = read_json(paths.metrics("line"))
    means = pd.read_csv(paths.evaluated("line")).groupby("variant")["test_accuracy"].mean()
    assert m["best_test_acc"] == round(means.max(), 4) and m["worst_test_acc"] == round(means.min(), 4)
    assert math.isclose(m["mean_test_acc"], means.mean(), abs_tol=1e-4)


def test_compare_rows_show_the_mean_a_percentage_or_a_ranking_of_the_matching_runs():
    from initlab.config import CompareRow
    from initlab.report import compare_row

    df = pd.DataFrame({"init": ["a", "a", "b", "b", "c"], "loss": ["ce", "ce", "ce", "mse", "ce"],
                       "val_accuracy": [0.5, 0.7, 0.9, 0.1, 0.7]})  # fmt: skip
    row = {"seed": "001", "claim": "c", "theirs": "t", "metric": "val_accuracy", "where": {"loss": "ce"}}
    assert compare_row(CompareRow(**row, digits=2), df) == "| 001 | c | t | 0.70 |"
    assert compare_row(CompareRow(**row, show="percent", digits=1), df) == "| 001 | c | t | 70.0 % |"
    ranked = compare_row(CompareRow(**row, show="rank", top=2, digits=0, label="accuracy"), df)
    assert ranked == "| 001 | c | t | top 2 by accuracy: b 90 %, c 70 % |"
    assert compare_row(CompareRow(**{**row, "where": {"loss": "l1"}}), df) is None  # no such runs: no row
