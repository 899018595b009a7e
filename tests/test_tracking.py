"""`initlab track`: one MLflow run per trained model, with its test metrics and its model, logged once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import REPO
from initlab.cli import app

runner = CliRunner()
LINE = "pipeline/train/line"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project in which `line` (cut down to 3 models) went through every stage up to evaluate."""
    root = tmp_path_factory.mktemp("trained")
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["studies"]["line"]["train"].update(inits=["default"], losses=["bce"], seeds=[0], epochs=2)
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        for stage in ("download", "prepare", "normalize", "train", "evaluate"):
            result = runner.invoke(app, [stage, "line"])
            assert result.exit_code == 0, result.output
    assert not (root / "mlflow.db").exists()  # train and evaluate leave MLflow alone
    return root


@pytest.fixture
def project(trained, tmp_path, monkeypatch):
    """A copy of ``trained``; its store is tmp_path/mlflow.db (conftest), new for each test."""
    root = tmp_path / "project"
    shutil.copytree(trained, root)
    monkeypatch.chdir(root)
    return root


def track(*args: str) -> dict:
    result = runner.invoke(app, ["track", *args])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("track: "), result.output  # after MLflow's INFO lines
    out = json.loads(Path("pipeline/tracking.json").read_text())
    assert sorted(out) == ["runs"]  # counts and times are in the timings file, outside the outputs
    return {**out, **json.loads(Path("pipeline/timings/track.json").read_text())}


def client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def all_runs(cl) -> list:
    exp = cl.get_experiment_by_name("initlab-line")
    return cl.search_runs([exp.experiment_id], max_results=1000)


def test_a_second_track_logs_nothing_and_a_changed_weight_file_only_its_run(project):
    first = track("line")
    names = sorted(pd.read_csv(f"{LINE}/runs.csv")["run_name"])
    assert (first["logged"], first["skipped"]) == (3, 0) and sorted(first["runs"]["line"]) == names
    assert first["mlflow_seconds"] > 0

    again = track("line")
    assert (again["logged"], again["skipped"]) == (0, 3)
    assert again["runs"] == first["runs"]  # the runs already there

    changed = names[0]
    w = Path(f"{LINE}/weights/{changed}.pt")
    state = torch.load(w, weights_only=True)
    torch.save({k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}, w)
    third = track("line")
    assert (third["logged"], third["skipped"]) == (1, 2)
    ids, before = third["runs"]["line"], first["runs"]["line"]
    assert ids[changed] != before[changed]
    assert {n: ids[n] for n in names[1:]} == {n: before[n] for n in names[1:]}
    runs = all_runs(client())
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}


def test_training_again_gives_the_same_files_and_adds_no_runs(project):
    first = track("line")
    outputs = [Path(LINE, "runs.csv"), Path(LINE, "curves.npz"), *sorted(Path(LINE, "weights").iterdir()),
               Path("pipeline/evaluate/line.csv")]  # fmt: skip
    before = [f.read_bytes() for f in outputs]
    timing = Path("pipeline/timings/train-line.json").read_text()
    for stage in ("train", "evaluate"):  # what `dvc repro -f` runs
        result = runner.invoke(app, [stage, "line"])
        assert result.exit_code == 0, result.output
    assert [f.read_bytes() for f in outputs] == before  # no timings in the outputs: same hashes
    assert Path("pipeline/timings/train-line.json").read_text() != timing  # they are here
    again = track("line")
    assert (again["logged"], again["skipped"]) == (0, 3) and again["runs"] == first["runs"]


def test_a_killed_or_failed_run_is_logged_again(project):
    first = track("line")["runs"]["line"]
    cl = client()
    killed, failed, kept = sorted(first)
    cl.set_terminated(first[killed], "KILLED")
    cl.set_terminated(first[failed], "FAILED")
    again = track("line")
    assert (again["logged"], again["skipped"]) == (2, 1)
    ids = again["runs"]["line"]
    assert ids[kept] == first[kept] and ids[killed] != first[killed] and ids[failed] != first[failed]
    assert all(cl.get_run(rid).info.status == "FINISHED" for rid in ids.values())


@pytest.mark.parametrize("saver", [False, True], ids=["one process", "model-saving process"])
def test_the_run_holds_train_and_test_metrics_params_and_a_loadable_model(project, monkeypatch, saver):
    import mlflow.pytorch

    import initlab.tracking
    from initlab.models import build_module

    if saver:  # models saved by the second process, as for a whole study
        monkeypatch.setattr(initlab.tracking, "SAVER_MIN_RUNS", 1)
    ids = track("line")["runs"]["line"]
    cl = client()
    evaluated = pd.read_csv("pipeline/evaluate/line.csv").set_index("run_name")
    archs = pd.read_csv(f"{LINE}/runs.csv").set_index("run_name")["arch"]
    x = torch.linspace(-2, 2, 17).unsqueeze(1)
    for name, rid in ids.items():
        run = cl.get_run(rid)
        m, row = run.data.metrics, evaluated.loc[name]
        assert run.info.status == "FINISHED" and run.info.run_name == name
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy"):
            assert m[key] == pytest.approx(row[key], rel=1e-12), key
        assert len(cl.get_metric_history(rid, "train_loss_step")) > 1
        assert run.data.params["init"] == row["init"] and "arch.sizes" in run.data.params
        assert run.data.tags["study"] == "line" and len(run.data.tags["initlab.run_key"]) == 64
        model = mlflow.pytorch.load_model(f"runs:/{rid}/model")
        arch = json.loads(archs[name])
        want = build_module(**arch)
        want.load_state_dict(torch.load(f"{LINE}/weights/{name}.pt", weights_only=True))
        with torch.no_grad():
            assert torch.equal(model(x), want(x))


def test_a_model_the_saver_cannot_save_fails_every_open_run(project, monkeypatch):
    import initlab.tracking

    monkeypatch.setattr(initlab.tracking, "SAVER_MIN_RUNS", 1)
    bad = sorted(Path(f"{LINE}/weights").iterdir())[1]
    bad.write_bytes(b"not a torch file")
    result = runner.invoke(app, ["track", "line"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1].startswith("initlab: error: saving a model for MLflow: "), result.output
    statuses = {r.info.run_name: r.info.status for r in all_runs(client())}
    assert statuses[bad.stem] == "FAILED" and "RUNNING" not in statuses.values()
    assert not Path("pipeline/tracking.json").exists()


@pytest.mark.parametrize(("remove", "args", "named"), [
    ("pipeline/evaluate/line.csv", ["line"], "pipeline/evaluate/line.csv missing"),
    (LINE, ["line"], f"{LINE}/runs.csv missing"),
    (None, [], "pipeline/train/circles/runs.csv missing"),  # the DVC stage logs every study
])  # fmt: skip
def test_a_missing_input_is_one_line_naming_the_file_and_the_stage(project, tmp_path, remove, args,
                                                                    named):
    if remove:
        shutil.rmtree(remove) if Path(remove).is_dir() else Path(remove).unlink()
    study = "line" if remove else "circles"
    result = runner.invoke(app, ["track", *args])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and named in result.output
    assert f"run `dvc repro evaluate@{study}` first" in result.output
    assert not (tmp_path / "mlflow.db").exists() and not Path("pipeline/tracking.json").exists()


def test_a_model_trained_again_but_not_evaluated_is_refused(project, tmp_path):
    p = yaml.safe_load(Path("params.yaml").read_text())
    p["studies"]["line"]["train"]["epochs"] = 3
    Path("params.yaml").write_text(yaml.safe_dump(p))
    assert runner.invoke(app, ["train", "line"]).exit_code == 0  # other weights and curves
    result = runner.invoke(app, ["track", "line"])
    assert result.exit_code == 2, result.output
    assert "pipeline/evaluate/line.csv does not match pipeline/train/line/runs.csv" in result.output
    assert not (tmp_path / "mlflow.db").exists()


def test_train_and_evaluate_do_not_import_mlflow(project, tmp_path):
    code = ("import sys\nfrom initlab.cli import app\n"
            "for stage in ('train', 'evaluate'):\n"
            "    app([stage, 'line'], standalone_mode=False)\n"
            "assert 'mlflow' not in sys.modules, 'mlflow imported'\n")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    timing = json.loads(Path("pipeline/timings/train-line.json").read_text())
    assert sorted(timing) == ["models", "run_seconds", "train_seconds"]
    assert not {"mlflow_run_id", "train_seconds"} & set(pd.read_csv(f"{LINE}/runs.csv").columns)
    assert not (tmp_path / "mlflow.db").exists() and not list(Path("pipeline/evaluate").glob("*.timing.json"))
    assert np.isfinite(pd.read_csv("pipeline/evaluate/line.csv")["test_accuracy"]).all()


def test_evaluate_without_a_trained_study_is_one_line_naming_the_stage(project):
    shutil.rmtree(LINE)
    result = runner.invoke(app, ["evaluate", "line"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1
    assert f"{LINE}/runs.csv missing; run `dvc repro train@line` first" in result.output


def test_an_interruption_swallowed_by_a_destructor_is_raised_at_the_next_check():
    from initlab.tracking import Terminated, raise_if_interrupted, sigterm_raises

    class Collected:  # SQLAlchemy's weakref callbacks are where a real SIGTERM was swallowed
        def __del__(self):
            raise Terminated("signal 15")

    with pytest.raises(Terminated), sigterm_raises():
        Collected()  # its exception goes to sys.unraisablehook, not to this frame
        raise_if_interrupted()
        pytest.fail("the swallowed SIGTERM was not raised")
