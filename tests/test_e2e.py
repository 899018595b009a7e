"""End to end: `dvc repro` of the CI profile in a temporary copy, checked against baselines."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import MIRROR, REPO

BASELINE = REPO / "tests" / "ci" / "baseline_runs.json"  # every run's test accuracy, and its platform
CI_PARAMS = REPO / "tests" / "ci" / "params.yaml"
CI_WORDS = REPO / "tests" / "ci" / "report.yaml"
N_STAGES = 5 * len(yaml.safe_load(CI_PARAMS.read_text())["studies"]) + 2
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e") / "project"
    shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / ".dvc", work / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, work / name)
    shutil.copy(CI_PARAMS, work / "params.yaml")
    shutil.copy(CI_WORDS, work / "report.yaml")
    env = {
        **os.environ,
        "INITLAB_DATA_MIRROR": str(MIRROR),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    run(["git", "init", "-q"], work, env)
    first = run(["dvc", "repro"], work, env)
    run(["git", "add", "-A"], work, env)
    run(["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", "repro"], work, env)
    return work, env, first


def variant_means(folder: Path) -> dict[str, dict[str, float | None]]:
    """Per study, each variant's mean test accuracy over seeds (4 decimals; None: diverged)."""
    out = {}
    for f in sorted(folder.glob("*.csv")):
        if f.stem.endswith(("_variants", "_curves", "_layers")):  # per-variant tables and plot data
            continue
        means = pd.read_csv(f).groupby("variant")["test_accuracy"].mean()
        out[f.stem] = {v: None if math.isnan(m) else round(float(m), 4) for v, m in means.items()}
    return out


def test_ci_profile_runs_every_stage_and_writes_the_report(project):
    work, _, first = project
    assert first.count("Running stage") == N_STAGES  # 5 stages per study, then track and report
    report = (work / "reports" / "report.md").read_text()
    for title in ("Line", "Circles", "Heart rate", "Fashion-MNIST"):
        assert f"## {title}" in report


def records(work: Path) -> dict[str, dict]:
    """Every study's pipeline/metrics/<study>_runs.json: what `initlab verify` compares."""
    studies = yaml.safe_load((work / "params.yaml").read_text())["studies"]
    return {s: json.loads((work / "pipeline" / "metrics" / f"{s}_runs.json").read_text()) for s in studies}


def gate(work: Path):
    """This run against the committed baseline, as `initlab verify` judges it."""
    from initlab.results.verify import compare, summary

    got, want = records(work), json.loads(BASELINE.read_text())
    c = compare(want, got)
    first = next(iter(want))
    return c, "\n".join(summary(c, want[first]["platform"], got[first]["platform"]))


def test_test_accuracies_reproduce_the_committed_baselines(project):
    """Identical on the baseline's platform; elsewhere each variant within its seed spread."""
    work, _, _ = project
    if os.environ.get("INITLAB_UPDATE_BASELINE"):
        BASELINE.write_text(json.dumps(records(work), indent=2, sort_keys=True) + "\n")
    c, text = gate(work)
    assert c.status != "regression", text
    assert c.status == "identical" or not c.same_platform, text


def retrain(work: Path, tmp: Path, env: dict, studies: list[str], prelude: str = "") -> Path:
    """A copy of the project with ``studies`` trained and evaluated again, after ``prelude``."""
    copy = tmp / "copy"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("mlflow.db*", ".dvc"))
    for study in studies:
        for stage in ("train", "evaluate"):
            code = f"{prelude}\nfrom initlab.cli import app\napp([{stage!r}, {study!r}])"
            out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True)
            assert out.returncode == 0, out.stderr[-3000:]
    return copy


PLANTED = """
import math, torch.nn as nn, initlab.nets.registry as r
def uniform_rule(w, generator=None):  # the bug: fan_out where the rule says fan_in, and no square root
    y = 1.0 / r.fans(w)[1] ** 0.25
    return nn.init.uniform_(w, -y, y, generator=generator)
r.INITIALIZERS["uniform_rule"] = uniform_rule
"""


def test_a_planted_regression_in_one_initialiser_fails_the_gate(project, tmp_path):
    work, env, _ = project
    copy = retrain(work, tmp_path, env, ["fashion_mnist"], PLANTED)
    c, text = gate(copy)
    assert c.status == "regression", text
    assert {m.variant for m in c.regressions} == {"uniform_rule-cross_entropy-none-lr0.001"}, text


def test_another_platforms_roundings_pass_the_gate(project, tmp_path):
    """MKL's COMPATIBLE branch computes other bits on any CPU: a simulated other platform."""
    work, env, _ = project
    studies = list(yaml.safe_load(CI_PARAMS.read_text())["studies"])
    copy = retrain(work, tmp_path, {**env, "MKL_CBWR": "COMPATIBLE"}, studies)
    c, text = gate(copy)
    assert not c.same_platform and c.moves, text  # other bits, or this test proves nothing
    assert c.status == "within bound", text


def test_the_seed_stories_hold_in_the_ci_profile(project):
    work, _, _ = project
    m = variant_means(work / "pipeline" / "evaluate")
    assert m["line"]["reproduce-bad_start-mse-none-lr2"] < 0.6
    assert m["line"]["bad_start-bce-none-lr2"] > 0.95
    assert m["heart_rate"]["default-bce_logits-none-lr0.1"] < 0.7
    assert m["heart_rate"]["default-bce_logits-zscore-lr0.1"] > 0.95
    assert m["heart_rate"]["default-bce_logits-batchnorm-lr0.1"] > 0.95
    fm = m["fashion_mnist"]
    assert fm["zeros-cross_entropy-none-lr0.001"] < 0.2
    assert fm["uniform_rule-cross_entropy-none-lr0.001"] > 0.6


def test_metrics_are_a_few_numbers_per_study_and_agree_with_the_tables(project):
    work, _, _ = project
    for study, variants in variant_means(work / "pipeline" / "evaluate").items():
        m = json.loads((work / "pipeline" / "metrics" / f"{study}.json").read_text())
        finite = [a for a in variants.values() if a is not None]
        assert sorted(m) == ["best_test_acc", "diverged", "mean_test_acc", "worst_test_acc"], study
        assert (m["best_test_acc"], m["worst_test_acc"]) == (max(finite), min(finite)), study
        assert m["mean_test_acc"] == pytest.approx(sum(finite) / len(finite), abs=1e-4), study


def test_variants_have_verdicts_and_dvc_draws_the_plots_from_data(project):
    work, env, _ = project
    fm = pd.read_csv(work / "pipeline" / "evaluate" / "fashion_mnist_variants.csv")
    own, seed = fm[~fm["reproduce"]], fm[fm["reproduce"]]
    assert (own["verdict"] == "best").sum() == 1 and (seed["verdict"] == "best").sum() == 1
    assert set(seed["metric"]) == {"val_accuracy"} and set(own["metric"]) == {"test_accuracy"}
    assert (fm["ci_low"] <= fm["mean"]).all() and (fm["mean"] <= fm["ci_high"]).all()
    plots = json.loads(run(["dvc", "plots", "show", "--json"], work, env))["data"]
    curves = plots["pipeline/evaluate/line_curves.csv"][0]["content"]["data"]["values"]
    variants = set(pd.read_csv(work / "pipeline" / "evaluate" / "line.csv")["variant"])
    assert {r["variant"] for r in curves} == variants and {r["rev"] for r in curves} == {"workspace"}


def test_forced_repro_leaves_dvc_lock_unchanged_and_a_pulled_clone_runs_nothing(project, tmp_path):
    work, env, _ = project
    lock = (work / "dvc.lock").read_text()
    out = run(["dvc", "repro", "-f"], work, env)
    assert out.count("Running stage") == N_STAGES
    assert (work / "dvc.lock").read_text() == lock  # no timings in any hashed output
    assert run(["git", "status", "--porcelain"], work, env) == ""  # metrics and report unchanged

    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], work, env)
    run(["dvc", "push"], work, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(work), str(clone)], tmp_path, env)
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], clone, env)
    clone_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{clone / 'mlflow.db'}"}
    run(["dvc", "pull"], clone, clone_env)
    status = run(["dvc", "status"], clone, clone_env)
    assert "up to date" in status, status
    assert "Running stage" not in run(["dvc", "repro"], clone, clone_env)
    for f in ("dvc.lock", "reports/report.md", "pipeline/tracking.json", "pipeline/evaluate/line.csv"):
        assert (clone / f).read_bytes() == (work / f).read_bytes(), f


def test_second_repro_does_nothing_and_a_param_reruns_only_its_stages(project):
    work, env, _ = project
    again = run(["dvc", "repro"], work, env)
    assert "Running stage" not in again
    params = (work / "params.yaml").read_text()
    (work / "params.yaml").write_text(params.replace("first_batches: 100", "first_batches: 50"))
    out = run(["dvc", "repro"], work, env)
    assert out.count("Running stage") == 1 and "Running stage 'report'" in out


def timed(work: Path) -> dict:
    """The track stage's run ids, and its counts and time (in the timings file)."""
    return {
        **json.loads((work / "pipeline" / "tracking.json").read_text()),
        **json.loads((work / "pipeline" / "timings" / "track.json").read_text()),
    }


def store(work: Path) -> tuple[dict[str, tuple[str, str]], dict[str, set[str]]]:
    """run id -> (experiment name, status), and run id -> its metric keys."""
    con = sqlite3.connect(f"file:{work / 'mlflow.db'}?mode=ro", uri=True)
    try:
        runs = {
            rid: (exp, status)
            for rid, exp, status in con.execute(
                "SELECT r.run_uuid, e.name, r.status FROM runs r JOIN experiments e USING (experiment_id)"
            )
        }
        keys: dict[str, set[str]] = {}
        for rid, key in con.execute("SELECT DISTINCT run_uuid, key FROM metrics"):
            keys.setdefault(rid, set()).add(key)
        return runs, keys
    finally:
        con.close()


def test_mlflow_holds_one_finished_run_per_trained_model_with_its_test_metrics(project):
    work, _, _ = project
    tracked = timed(work)
    runs, keys = store(work)
    n = total = 0
    for study in yaml.safe_load(CI_PARAMS.read_text())["studies"]:
        table = pd.read_csv(work / "pipeline" / "evaluate" / f"{study}.csv")
        ids, parents = tracked["runs"][study], tracked["parents"][study]
        assert sorted(ids) == sorted(table["run_name"]) and sorted(parents) == sorted(set(table["variant"])), study
        n_runs = len(table) + len(parents)  # a run per model, a parent per variant
        assert sum(exp == f"initlab-{study}" for exp, _ in runs.values()) == n_runs  # no duplicates
        for name, acc in zip(table["run_name"], table["test_accuracy"]):
            assert runs[ids[name]] == (f"initlab-{study}", "FINISHED"), (study, name)
            assert {"train_loss_step", "val_loss_epoch", "steps"} <= keys[ids[name]], (study, name)
            assert ("test_accuracy" in keys[ids[name]]) == math.isfinite(acc), (study, name)  # NaN: diverged
        for pid in parents.values():
            assert runs[pid] == (f"initlab-{study}", "FINISHED") and "seeds" in keys[pid], study
        n += len(table)
        total += n_runs
    assert tracked["logged"] + tracked["skipped"] == n and len(runs) == total  # the forced repro skipped all
    assert 0 < tracked["mlflow_seconds"]


def test_track_again_logs_nothing_and_a_new_store_gets_every_run(project):
    work, env, _ = project
    before, _ = store(work)
    models = sum(len(ids) for ids in timed(work)["runs"].values())  # the stores also hold a parent per variant
    run(["dvc", "repro", "-f", "-s", "track"], work, env)
    again = timed(work)
    assert again["logged"] == 0 and again["skipped"] == models
    assert store(work)[0] == before
    for f in work.glob("mlflow.db*"):  # the documented recovery: delete the store, force the stage
        f.unlink()
    run(["dvc", "repro", "-f", "-s", "track"], work, env)
    fresh = timed(work)
    runs, _ = store(work)
    assert fresh["logged"] == models and fresh["skipped"] == 0
    assert len(runs) == len(before) and {s for _, s in runs.values()} == {"FINISHED"}
    assert "Running stage" not in run(["dvc", "repro"], work, env)


def test_bench_refuses_a_subset_with_one_line(project):
    work, env, _ = project
    out = subprocess.run(
        ["initlab", "bench", "--no-pipeline", "--out", "b.json"], cwd=work, env=env, capture_output=True, text=True
    )
    assert out.returncode == 2, out.stderr
    assert "48,000 training images" in out.stderr and "train_subset" in out.stderr
    assert not (work / "b.json").exists()


def test_a_new_study_is_params_and_a_title_and_leaves_the_others_up_to_date(project):
    """make_moons (a scikit-learn generator) and a CSV file, added to params.yaml (and their
    titles to report.yaml) and nothing else, go through every stage; no stage of another study
    re-runs."""
    work, env, _ = project
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 3))
    y = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "yes", "no")
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": y}).to_csv(work / "mine.csv", index=False)
    p = yaml.safe_load((work / "params.yaml").read_text())
    train = {
        "model": {"hidden": [8], "activation": "tanh"},
        "optimizer": "adam",
        "lr": [0.05],
        "batch_size": 32,
        "epochs": 20,
        "seeds": [0, 1],
        "inits": ["xavier_uniform", "zeros"],
        "losses": ["bce_logits"],
        "normalize": ["zscore"],
    }
    inits = {"xavier_uniform": {"name": "xavier_uniform"}, "zeros": {"name": "zeros"}}
    p["studies"]["moons"] = {
        "data": {
            "kind": "sklearn",
            "generator": "make_moons",
            "args": {"n_samples": 300, "noise": 0.2, "random_state": 0},
        },
        "split": {"seed": 0},
        "train": train,
        "inits": inits,
    }
    p["studies"]["mine"] = {
        "data": {"kind": "table", "path": "mine.csv", "target": "label"},
        "split": {"seed": 1},
        "train": train,
        "inits": inits,
    }
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    words = yaml.safe_load((work / "report.yaml").read_text())
    words["studies"]["moons"] = {"title": "Moons", "question": "Does a tanh MLP separate the moons?"}
    words["studies"]["mine"] = {"title": "My table"}
    (work / "report.yaml").write_text(yaml.safe_dump(words, sort_keys=False, allow_unicode=True))
    refused = subprocess.run(["dvc", "repro", "download@mine"], cwd=work, env=env, capture_output=True, text=True)
    digest = hashlib.sha256((work / "mine.csv").read_bytes()).hexdigest()
    assert refused.returncode != 0 and f"set it to {digest}" in refused.stdout + refused.stderr
    p["studies"]["mine"]["data"]["sha256"] = digest  # the file's hash in params: DVC sees a new file
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = run(["dvc", "repro"], work, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {
        f"{stage}@{s}"
        for s in ("moons", "mine")
        for stage in ("download", "prepare", "normalize", "train", "evaluate")
    } | {"track", "report"}
    report = (work / "reports" / "report.md").read_text()
    assert "## Moons" in report and "## My table" in report and "*Does a tanh MLP separate the moons?*" in report
    m = variant_means(work / "pipeline" / "evaluate")
    assert m["moons"]["xavier_uniform-bce_logits-zscore-lr0.05"] > 0.8  # it trains
    assert m["mine"]["xavier_uniform-bce_logits-zscore-lr0.05"] > 0.8
    assert m["mine"]["zeros-bce_logits-zscore-lr0.05"] < 0.7  # tanh(0) = 0: no gradient, no learning
    assert (work / "pipeline" / "metrics" / "moons.json").exists()
    assert (work / "reports" / "figures" / "moons_boundary.png").exists()
