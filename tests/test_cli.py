"""The CLI: --help explains, bad params are one line with exit code 2 and change nothing."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from initlab.cli import app
from initlab.core.io import read_npz
from initlab.errors import ParamsError
from initlab.params.load import load_params

runner = CliRunner()
REPO_PARAMS = yaml.safe_load(open(__file__.rsplit("/", 2)[0] + "/params.yaml"))
REPO_WORDS = __file__.rsplit("/", 2)[0] + "/report.yaml"


def test_the_cli_has_one_command_per_dvc_stage_the_bench_verify_and_the_server():
    import typer

    stages = yaml.safe_load(open(__file__.rsplit("/", 2)[0] + "/dvc.yaml"))["stages"]
    commands = {s.get("do", s)["cmd"].split()[1] for s in stages.values()}
    assert set(typer.main.get_command(app).commands) == commands | {"bench", "verify", "server"}
    for command in commands | {"verify"}:  # each explains itself
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and len(result.output.splitlines()) > 5, command


def with_change(path: str, value):
    p = yaml.safe_load(yaml.safe_dump(REPO_PARAMS))
    *parents, last = path.split(".")
    node = p
    for k in parents:
        node = node[k]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return p


def line_cut(**train) -> dict:
    """params.yaml with line's grid cut to ``train`` (default: one BCE model of seed 0, 2 epochs)."""
    cut = {"inits": ["default"], "losses": ["bce"], "seeds": [0], "epochs": 2, **train}
    return with_change("studies.line.train", {**REPO_PARAMS["studies"]["line"]["train"], **cut})


BAD = [
    ("studies.line.train.inits", ["no_such_init"], "no_such_init"),
    ("studies.line.train.losses", ["hinge"], "unknown loss 'hinge'"),
    ("studies.line.train.lr", [-1.0], "greater than 0"),
    ("studies.line.train.epochs", 0, "greater than 0"),
    ("studies.fashion_mnist.train.batch_size", -5, "greater than 0"),
    ("studies.circles.train.normalize", ["minmax"], "minmax"),
    ("studies.line.train.optimizer", "rmsprop", "rmsprop"),
    ("studies.circles.split.val_fraction", 1.5, "less than 1"),
    ("studies.heart_rate.split.test_fraction", 0.9, "allowed: a sum below 1"),
    ("studies.fashion_mnist.inits.zeros.name", "zeroes", "unknown initialiser 'zeroes'"),
    ("studies.line.train.seeds", [], "at least 1"),
    ("studies.line.train.epochs", "many", "valid integer"),
    ("studies.heart_rate.train", KeyError, "missing key studies.heart_rate.train"),
    ("studies.line.train.color", "red", "unknown key studies.line.train.color"),
    ("studies.line.train.lr", [], "empty list; allowed: one or more positive learning rates"),
    ("studies.line.split.val_fraction", 0, "greater than 0"),
    ("studies.fashion_mnist.train.model.dropout", 1.0, "less than 1"),
    ("studies.line.train.model.activation", "gelu", "gelu"),
    ("studies.line.train.reproduce.losses", ["hinge"], "unknown loss 'hinge'"),
    ("studies.circles.data.generator", "make_spirals", "unknown generator 'make_spirals'"),
    ("studies.line.data.step", 0, "greater than 0"),
    ("studies.line.data.kind", "mnist", "does not match any of the expected tags"),
    ("studies.fashion_mnist.data.dataset", "ImageNet", "ImageNet"),
    ("studies.line.train.shuffle", "maybe", "valid boolean"),
    ("studies.heart_rate.data.threshold_bpm", -3, "greater than 0"),
    ("studies.fashion_mnist.train.val_every", 0, "greater than 0"),
    ("studies.line.train.lr", [float("inf")], "finite number"),
    ("studies.line.train.seeds", [0, 0], "0 given twice; allowed: distinct values"),
    ("studies.fashion_mnist.inits.uniform.args", {"a": 1.0, "b": 0.0}, "uniform needs a < b"),
    ("studies.fashion_mnist.inits.uniform.args", {"low": 0.0}, "uniform takes no argument 'low'; allowed: a, b"),
    ("studies.line.inits.bad_start.bias", float("nan"), "bad_start.bias"),
    (
        "studies.line.inits.bad_start.bias",
        "ones",
        "studies.line.inits.bad_start.bias = 'ones': allowed: a number, 'zeros' or 'default'",
    ),
    (
        "studies.depth.profiles.full",
        {"train.epochs": 0},
        "profiles.full: train.epochs = 0: Input should be greater than 0",
    ),
    ("studies.depth.profiles.full", {"trian.epochs": 5}, "profiles.full: 'trian.epochs' is not a key"),
    ("studies.depth.train.models.relu30", {"depth": 30, "width": 0}, "allowed: two positive integers"),
    ("studies.depth.train.models.relu30", {"depth": 3, "width": 8, "hidden": [4]}, "not both"),
    ("studies.depth.train.model", {"hidden": [4]}, "give model (one architecture) or models"),
    (
        "studies.depth.inits.lsuv.args",
        {"tol": 0.1, "rounds": 3},
        "lsuv takes no argument 'rounds'; allowed: tol, max_rounds",
    ),
    ("studies.saturation.train.diagnostics.at_steps", [-1], "greater than or equal to 0"),
    ("studies.circles_dlai.data.val_args", None, "give both"),
    ("studies.line.train.lr", [True], "studies.line.train.lr.0 = True: Input should be a valid number"),
    ("studies.line.split.seed", -1, "studies.line.split.seed = -1: Input should be greater than or equal to 0"),
    ("studies.line.data.start", 3.0, "studies.line.data.start = 3 is not below stop = 2; allowed: start < stop"),
    ("studies.line.title", "Line", "unknown key studies.line.title"),  # the report's words: report.yaml
]


@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_params_name_the_key_and_what_is_allowed(tmp_path, key, value, message):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(with_change(key, value)))
    with pytest.raises(ParamsError) as err:
        load_params(f)
    text = str(err.value)
    assert "\n" not in text and message in text
    assert key.split(".")[0] in text


BAD_WORDS = [
    (
        "studies.line.compare.0.digits",
        -1,
        "studies.line.compare.0.digits = -1: Input should be greater than or equal to 0",
    ),
    (
        "studies.circles.compare.0.show",
        "pct",
        "studies.circles.compare.0.show = 'pct': Input should be 'mean', 'mean_std', 'percent' or 'rank'",
    ),
    ("studies.line.compare.0.seed", "000", "unknown key studies.line.compare.0.seed"),
    ("studies.depth.title", KeyError, "missing key studies.depth.title"),
    ("studies.depth", KeyError, "missing key studies.depth; every study of params.yaml needs its title here"),
    ("studies.line.title", 5, "studies.line.title = 5: Input should be a valid string"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_WORDS, ids=[b[0] for b in BAD_WORDS])
def test_bad_report_words_stop_the_report_with_exit_2_and_one_line(tmp_path, monkeypatch, key, value, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(REPO_PARAMS))
    words = yaml.safe_load(open(REPO_WORDS))
    *parents, last = key.split(".")
    node = words
    for k in parents:
        node = node[int(k) if isinstance(node, list) else k]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    (tmp_path / "report.yaml").write_text(yaml.safe_dump(words))
    result = runner.invoke(app, ["report"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"initlab: error: report.yaml: {message}") and result.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "report.yaml"]  # no reports/


def test_the_report_names_the_profile_its_numbers_come_from(tmp_path):
    """Default params ran no profile; params with the profile's values set ran it, and the note
    gives the command for each other profile."""
    from initlab.report.prose import profile_note

    default = load_params().study("depth")
    assert "Profile: **default**" in profile_note("depth", default)
    assert "-S 'studies.depth.train.epochs=5'" in profile_note("depth", default)
    f = tmp_path / "params.yaml"
    overrides = default.profiles["full"]
    changed = with_change("studies.depth.split.train_subset", overrides["split.train_subset"])
    changed["studies"]["depth"]["split"]["test_subset"] = overrides["split.test_subset"]
    changed["studies"]["depth"]["train"]["epochs"] = overrides["train.epochs"]
    f.write_text(yaml.safe_dump(changed))
    note = profile_note("depth", load_params(f).study("depth"))
    assert note == "Profile: **full** (the one these numbers come from)."


def store_rows(db: Path) -> dict[str, list]:
    """Every row of every table of an MLflow SQLite store, opened read-only."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(con.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    finally:
        con.close()


def folder_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (the MLflow database aside) with its content."""
    return {
        str(f.relative_to(root)): f.read_bytes()
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.name != "mlflow.db"
    }


def changes(before: dict, after: dict) -> list[str]:
    """The keys (tables, files) added, removed or changed."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


@pytest.fixture(scope="module")
def project_with_store(tmp_path_factory):
    """A project in which `line` went through every stage: mlflow.db with FINISHED runs, pipeline/."""
    root = tmp_path_factory.mktemp("with_store")
    p = line_cut()
    p["tracking"]["log_models"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        for stage in ("download", "prepare", "normalize", "train", "evaluate", "track"):
            result = runner.invoke(app, [stage, "line"])
            assert result.exit_code == 0, result.output
    con = sqlite3.connect(root / "mlflow.db")
    runs = con.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
    n_metrics = con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    con.close()
    assert runs == [("FINISHED", 3 + 3)] and n_metrics > 3 * 10  # 1 run, 2 reproductions; their parents
    assert (root / "pipeline" / "tracking.json").exists()
    return root


@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_params_stop_the_stage_with_exit_2_and_no_output(tmp_path, monkeypatch, key, value, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_change(key, value)))
    for stage in (["download", "line"], ["prepare", "line"], ["train", "line"], ["track"], ["report"]):
        result = runner.invoke(app, stage)
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no pipeline/, no mlflow.db


@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_params_leave_the_store_and_the_outputs_as_they_were(
    project_with_store, tmp_path, monkeypatch, key, value, message
):
    shutil.copytree(project_with_store, tmp_path, dirs_exist_ok=True)  # mlflow.db is MLFLOW_TRACKING_URI
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_change(key, value)))
    rows, files = store_rows(tmp_path / "mlflow.db"), folder_bytes(tmp_path)
    for stage in (["download", "line"], ["prepare", "line"], ["train", "line"], ["track"], ["report"]):
        result = runner.invoke(app, stage)
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") == 1
    assert changes(rows, store_rows(tmp_path / "mlflow.db")) == []  # runs, statuses, metrics...
    assert changes(files, folder_bytes(tmp_path)) == []  # outputs byte for byte; no new file


def test_bad_params_exit_2_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_change("studies.line.train.lr", [0])))
    result = runner.invoke(app, ["train", "line"])
    assert result.exit_code == 2
    assert "studies.line.train.lr" in result.output
    assert not (tmp_path / "pipeline").exists() and not (tmp_path / "mlflow.db").exists()


def test_unknown_study_is_refused():
    result = runner.invoke(app, ["download", "mnist"])
    assert result.exit_code == 2 and "mnist" in result.output


@pytest.mark.parametrize("where", ["min", "max", "above"])
def test_heart_rate_threshold_outside_the_data_is_a_params_error(small_root, tmp_path, monkeypatch, where):
    shutil.copytree(small_root.pipeline, tmp_path / "pipeline")
    monkeypatch.chdir(tmp_path)
    x = read_npz(small_root.prepared("heart_rate"))["x_train"]
    lo, hi = float(x.min()), float(x.max())
    bpm = {"min": lo, "max": hi, "above": 500.0}[where]
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(with_change("studies.heart_rate.data.threshold_bpm", bpm))
    )
    files = folder_bytes(tmp_path)
    result = runner.invoke(app, ["prepare", "heart_rate"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1
    assert result.output.startswith("initlab: error: params.yaml: studies.heart_rate.data.threshold_bpm = ")
    assert f"= {bpm:g} " in result.output
    assert f"allowed: between the training split's min {lo:.2f} and max {hi:.2f} bpm" in result.output
    assert folder_bytes(tmp_path) == files  # the earlier split is still there, unchanged


def test_heart_rate_threshold_inside_the_data_labels_with_it(small_root, tmp_path, monkeypatch):
    shutil.copytree(small_root.raw("heart_rate"), tmp_path / "pipeline" / "raw" / "heart_rate")
    monkeypatch.chdir(tmp_path)
    x = read_npz(small_root.prepared("heart_rate"))["x_train"][:, 0]
    bpm = float(np.unique(x)[1])  # the lowest threshold with a beat on each side
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(with_change("studies.heart_rate.data.threshold_bpm", bpm))
    )
    result = runner.invoke(app, ["prepare", "heart_rate"])
    assert result.exit_code == 0, result.output
    d = read_npz(tmp_path / "pipeline" / "prepared" / "heart_rate.npz")
    assert np.array_equal(d["y_train"], d["x_train"][:, 0] > bpm) and d["y_train"].sum() < len(x) - 1


def test_bench_refuses_an_unknown_device_with_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = __file__.rsplit("/", 2)[0] + "/params.yaml"
    result = runner.invoke(app, ["bench", "--params", params, "--device", "tpu", "--no-pipeline"])
    assert result.exit_code == 2
    assert "--device 'tpu'; allowed: cpu, cuda, cuda:N" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"device: cpu\ndevice: cuda\n", "not valid YAML at line 2, column 1: duplicate key 'device'"),
        (b"studies: {line: [1, 2}\n", "not valid YAML at line 1, column"),
        (b"device: \xff\xfe cpu\n", "not UTF-8 text"),
    ],
)
def test_a_params_file_that_is_not_clean_yaml_is_one_line_with_where(tmp_path, content, message):
    f = tmp_path / "params.yaml"
    f.write_bytes(content)
    with pytest.raises(ParamsError, match=message) as err:
        load_params(f)
    assert "\n" not in str(err.value)


def test_params_pointing_at_a_folder_is_one_line(tmp_path):
    with pytest.raises(ParamsError, match="is a folder; pass a params file"):
        load_params(tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("studies.line.train.batch_size", 41, "batch_size = 41 is more than the training split's 40 rows"),
        ("studies.line.train.epochs", 10**12, "allowed here: at most"),
    ],
)
def test_training_params_that_do_not_fit_the_data_stop_before_training(tmp_path, monkeypatch, key, value, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_change(key, value)))
    for stage in ("download", "prepare", "normalize"):
        assert runner.invoke(app, [stage, "line"]).exit_code == 0
    result = runner.invoke(app, ["train", "line"])
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "pipeline" / "train").exists()


def test_a_threshold_that_leaves_one_class_is_a_params_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_change("studies.line.data.threshold", 5.0)))
    result = runner.invoke(app, ["download", "line"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "studies.line.data.threshold = 5 puts every point from start = -2 to stop = 2" in result.output
    assert not (tmp_path / "pipeline").exists()


@pytest.fixture(scope="module")
def evaluated_line(tmp_path_factory):
    """line, cut to 3 models, through download ... evaluate (no MLflow)."""
    root = tmp_path_factory.mktemp("evaluated")
    p = line_cut()
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    shutil.copy(REPO_WORDS, root / "report.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for stage in ("download", "prepare", "normalize", "train", "evaluate"):
            assert runner.invoke(app, [stage, "line"]).exit_code == 0
    return root


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def of_circles(path: Path) -> None:
    """The file as another study's would be (one copied over another): its study says circles."""
    import json

    import numpy as np

    if path.suffix == ".npz":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        with open(path, "wb") as f:
            np.savez(f, **{**arrays, "study": np.array("circles")})
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), "study": "circles"}))


BROKEN = [  # (file, how, the stage that reads it, what the one line says)
    ("pipeline/prepared/line.npz", truncate, "normalize", "unreadable"),
    ("pipeline/prepared/line.npz", truncate, "train", "unreadable"),
    ("pipeline/normalize/line.json", Path.unlink, "train", "missing; run `dvc repro -f normalize@line`"),
    ("pipeline/normalize/line.json", lambda p: p.write_text("{not json"), "evaluate", "normalize@line"),
    ("pipeline/train/line/weights/default-bce-none-lr2-s0.pt", truncate, "evaluate", "train@line"),
    ("pipeline/train/line/runs.csv", lambda p: p.write_text(""), "evaluate", "unreadable"),
    ("pipeline/train/line/runs.csv", lambda p: p.write_text("a,b\n1,2\n"), "evaluate", "no column run_name"),
    ("pipeline/train/line/curves.npz", truncate, "report", "train@line"),
    (
        "pipeline/raw/line/line.npz",
        lambda p: shutil.rmtree(p.parent),
        "prepare",
        "missing; run `dvc repro -f download@line`",
    ),
    (
        "pipeline/prepared/line.npz",
        of_circles,
        "normalize",
        "holds study 'circles', not 'line'; run `dvc repro -f prepare@line`",
    ),
    ("pipeline/prepared/line.json", of_circles, "train", "holds study 'circles', not 'line'"),
    (
        "pipeline/normalize/line.json",
        of_circles,
        "evaluate",
        "holds study 'circles', not 'line'; run `dvc repro -f normalize@line`",
    ),
]


@pytest.mark.parametrize(
    ("name", "breaks", "stage", "message"), BROKEN, ids=[f"{b[2]}-{Path(b[0]).name}" for b in BROKEN]
)
def test_a_broken_stage_input_is_one_line_naming_the_file_and_the_stage_to_rerun(
    evaluated_line, tmp_path, monkeypatch, name, breaks, stage, message
):
    shutil.copytree(evaluated_line, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    breaks(tmp_path / name)
    result = runner.invoke(app, [stage] if stage == "report" else [stage, "line"])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and name in result.output and message in result.output
