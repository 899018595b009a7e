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
from initlab.core.io import sha256

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
    assert sorted(out) == ["parents", "runs"]  # counts and times are in the timings file, outside the outputs
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
    runs = all_runs(client())  # 3 variants of one seed each, and the changed one again: parents and seeds
    assert len(runs) == 2 * 4 and {r.info.status for r in runs} == {"FINISHED"}


def test_training_again_gives_the_same_files_and_adds_no_runs(project):
    first = track("line")
    outputs = [
        Path(LINE, "runs.csv"),
        Path(LINE, "curves.npz"),
        *sorted(Path(LINE, "weights").iterdir()),
        Path("pipeline/evaluate/line.csv"),
    ]
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


def test_the_run_holds_train_and_test_metrics_params_and_a_loadable_pt2_model(project):
    import mlflow.pytorch

    from initlab.nets.models import build_module

    ids = track("line")["runs"]["line"]
    cl = client()
    evaluated = pd.read_csv("pipeline/evaluate/line.csv").set_index("run_name")
    archs = pd.read_csv(f"{LINE}/runs.csv").set_index("run_name")["arch"]
    x = torch.linspace(-2, 2, 17).unsqueeze(1)
    for name, rid in ids.items():
        run = cl.get_run(rid)
        m, row = run.data.metrics, evaluated.loc[name]
        assert run.info.status == "FINISHED" and run.info.run_name == f"seed {row['seed']}"
        parent = cl.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.info.run_name == row["variant"] and parent.info.status == "FINISHED"
        assert parent.data.tags["variant_config"].startswith(f"{row['variant']}@")
        digest = sha256(Path("pipeline/prepared/line.npz"))[:16]
        assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [digest]
        assert len(cl.get_metric_history(rid, "val_loss")) == 1  # the final value; the curve is val_loss_epoch
        assert abs((run.info.end_time - run.info.start_time) / 1000 - m["train_seconds"]) < 2  # its training's
        vt = pd.read_csv("pipeline/evaluate/line_variants.csv").set_index("variant")
        v = vt.loc[row["variant"]]
        assert parent.data.metrics[f"{v['metric']}_mean"] == pytest.approx(v["mean"], rel=1e-5)
        assert parent.data.tags["verdict"] == v["verdict"] == run.data.tags["verdict"]
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy"):
            assert m[key] == pytest.approx(row[key], rel=1e-12), key
        assert len(cl.get_metric_history(rid, "train_loss_step")) > 1
        assert run.data.params["init"] == row["init"] and "arch.sizes" in run.data.params
        assert run.data.tags["study"] == "line" and len(run.data.tags["initlab.run_key"]) == 64
        model_dir = Path(cl.download_artifacts(rid, "model"))
        assert list((model_dir / "data").glob("*.pt2")) and not list(model_dir.rglob("*.pth"))  # no pickle
        model = mlflow.pytorch.load_model(f"runs:/{rid}/model")
        arch = json.loads(archs[name])
        want = build_module(**arch)
        want.load_state_dict(torch.load(f"{LINE}/weights/{name}.pt", weights_only=True))
        with torch.no_grad():
            assert torch.equal(model(x), want(x))


def test_broken_weights_are_refused_before_the_store_is_opened(project, tmp_path):
    bad = sorted(Path(f"{LINE}/weights").iterdir())[1]
    bad.write_bytes(b"not a torch file")
    result = runner.invoke(app, ["track", "line"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"initlab: error: {bad}: unreadable"), result.output
    assert not (tmp_path / "mlflow.db").exists() and not Path("pipeline/tracking.json").exists()


def test_a_model_that_cannot_be_saved_fails_its_run_and_no_run_is_left_running(project, monkeypatch):
    from initlab.tracking.models import ModelWriter

    bad = sorted(Path(f"{LINE}/weights").iterdir())[1]
    real = ModelWriter.save

    def save(self, r, path):  # this model's save fails (MLflow's writer, a full disk...)
        if r.weights.name == bad.name:
            raise RuntimeError("cannot save")
        return real(self, r, path)

    monkeypatch.setattr(ModelWriter, "save", save)
    result = runner.invoke(app, ["track", "line"])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and "logging failed after" in result.output, result.output
    runs = all_runs(client())
    statuses = {r.data.tags.get("variant"): r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags}
    bad_variant = pd.read_csv(f"{LINE}/runs.csv").set_index("run_name").loc[bad.stem, "variant"]
    assert statuses[bad_variant] == "FAILED" and "RUNNING" not in {r.info.status for r in runs}
    assert {r.info.status for r in runs if r.info.run_name == bad_variant} == {"FAILED"}  # its parent too
    assert not Path("pipeline/tracking.json").exists()


@pytest.mark.parametrize(
    ("remove", "args", "named"),
    [
        ("pipeline/evaluate/line.csv", ["line"], "pipeline/evaluate/line.csv missing"),
        (LINE, ["line"], f"{LINE}/runs.csv missing"),
        (None, [], "pipeline/train/circles/runs.csv missing"),  # the DVC stage logs every study
    ],
)
def test_a_missing_input_is_one_line_naming_the_file_and_the_stage(project, tmp_path, remove, args, named):
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
    code = (
        "import sys\nfrom initlab.cli import app\n"
        "for stage in ('train', 'evaluate'):\n"
        "    app([stage, 'line'], standalone_mode=False)\n"
        "assert 'mlflow' not in sys.modules, 'mlflow imported'\n"
    )
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


def _set_store_timeout(seconds: float) -> None:
    p = yaml.safe_load(Path("params.yaml").read_text())
    p["tracking"]["store_timeout_s"] = seconds
    Path("params.yaml").write_text(yaml.safe_dump(p))


def _broken_store(kind: str, tmp_path: Path, stack) -> str:
    """MLFLOW_TRACKING_URI of a store that cannot be used, made real: sockets, files."""
    import socket
    import sqlite3

    db = tmp_path / "broken.db"
    if kind in ("refused", "silent"):
        sock = stack.enter_context(socket.socket())
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        if kind == "refused":
            sock.close()  # nothing listens there now
        else:
            sock.listen()  # the kernel completes the connection; nobody ever answers
        return f"http://127.0.0.1:{port}"
    if kind == "garbage":
        db.write_bytes(os.urandom(8192))
    elif kind == "half-made":  # what a store killed during its migrations looked like
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY)")
        con.commit()
        con.close()
    elif kind == "truncated":
        from mlflow.tracking import MlflowClient

        MlflowClient(f"sqlite:///{db}").search_experiments()
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2])
    return f"sqlite:///{db}"


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("refused", "no store answered within 2 s"),
        ("silent", "no store answered within 2 s"),
        ("garbage", "is not a whole MLflow store (file is not a database)"),
        ("half-made", "is not a whole MLflow store (no such table: alembic_version)"),
        ("truncated", "is not a whole MLflow store"),
    ],
)
def test_a_store_that_cannot_be_used_fails_fast_in_one_line(project, tmp_path, monkeypatch, kind, says):
    import contextlib
    import time

    _set_store_timeout(2)
    with contextlib.ExitStack() as stack:
        uri = _broken_store(kind, tmp_path, stack)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        t0 = time.monotonic()
        result = runner.invoke(app, ["track", "line"])
        seconds = time.monotonic() - t0
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
    assert result.output.startswith(f"initlab: error: MLFLOW_TRACKING_URI={uri}: ") and says in result.output
    assert seconds < 2 + 3, seconds  # the deadline, and the time to build the runs
    assert not Path("pipeline/tracking.json").exists()


def test_an_empty_store_file_is_made_a_store(project, tmp_path, monkeypatch):
    db = tmp_path / "empty.db"
    db.write_bytes(b"")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert track("line")["logged"] == 3
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no temporary left


def test_a_run_left_running_by_a_dead_process_is_ended_killed_and_logged_again(project):
    from initlab.tracking.existing import OWNER_TAG

    first = track("line")["runs"]["line"]
    cl = client()
    orphan = sorted(first)[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = json.loads(json.dumps(cl.get_run(first[orphan]).data.tags[OWNER_TAG])).rpartition(":")[0]
    cl.set_tag(first[orphan], OWNER_TAG, f"{host}:{dead.stdout.strip()}")
    cl.update_run(first[orphan], status="RUNNING")  # as a SIGKILL would have left it, before its end
    live = sorted(first)[1]
    cl.set_tag(first[live], OWNER_TAG, f"{host}:{os.getppid()}")  # a process that is alive: not touched
    cl.update_run(first[live], status="RUNNING")

    result = runner.invoke(app, ["track", "line"])
    assert result.exit_code == 0, result.output
    assert "ended KILLED 1 runs left RUNNING by a killed track" in result.output
    again = json.loads(Path("pipeline/tracking.json").read_text())["runs"]["line"]
    assert cl.get_run(first[orphan]).info.status == "KILLED" and again[orphan] != first[orphan]
    assert cl.get_run(first[live]).info.status == "RUNNING"
    assert cl.get_run(again[orphan]).info.status == "FINISHED"


def test_an_experiment_deleted_in_the_ui_is_one_line_naming_it_and_the_fix(project):
    track("line")
    cl = client()
    exp = cl.get_experiment_by_name("initlab-line").experiment_id
    cl.delete_experiment(exp)  # as the UI's "Delete experiment" does: the name stays taken
    result = runner.invoke(app, ["track", "line"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert f"experiment initlab-line (id {exp}) is deleted; restore it" in result.output
    cl.restore_experiment(exp)
    assert track("line")["logged"] == 0  # restored: its runs are there again
