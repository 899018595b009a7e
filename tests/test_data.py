"""Data: shapes, checksums, disjoint splits, statistics from the training split only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from initlab.core.io import read_json, read_npz, sha256
from initlab.data.prepare import prepare
from initlab.data.raw import ECG_SHA256, download
from initlab.data.splits import load_split
from initlab.errors import DataError
from initlab.params.paths import Paths


def test_line_is_seed_000s_training_set_and_a_disjoint_holdout(small_root):
    d = read_npz(small_root.prepared("line"))
    assert d["x_train"].shape == (40, 1)
    x = torch.arange(-2, 2, 0.1).view(-1, 1)  # the seed's own construction
    assert np.array_equal(d["x_train"], x.numpy())
    assert np.array_equal(d["y_train"], (x[:, 0] > 0.2).long().numpy())
    held = np.concatenate([d["x_val"], d["x_test"]])[:, 0]
    assert not np.isin(np.round(held, 4), np.round(d["x_train"][:, 0], 4)).any()
    assert np.array_equal(
        np.concatenate([d["y_val"], d["y_test"]]),
        (np.concatenate([d["x_val"], d["x_test"]])[:, 0] > 0.2).astype(int),
    )


def test_circles_splits_are_disjoint_and_cover_the_data(small_root):
    d = read_npz(small_root.prepared("circles"))
    points = [{tuple(r) for r in d[f"x_{s}"].round(6)} for s in ("train", "val", "test")]
    assert sum(len(p) for p in points) == len(set().union(*points)) == 500  # no point in two splits


def test_heart_rate_splits_are_disjoint_beats_and_cover_the_record(small_root, params):
    from initlab.data.prepare import heart_rate_bpm

    d = read_npz(small_root.prepared("heart_rate"))
    h = params.study("heart_rate").data
    bpm = heart_rate_bpm(small_root.raw("heart_rate") / "ecg.dat", h.sampling_hz, h.peak_distance)
    beats = [d[f"beat_{s}"] for s in ("train", "val", "test")]
    assert sorted(np.concatenate(beats).tolist()) == list(range(len(bpm)))  # each beat once
    for s, b in zip(("train", "val", "test"), beats):
        assert np.array_equal(d[f"x_{s}"][:, 0], bpm[b]), s  # the rows are those beats' rates


def test_heart_rate_is_real_bpm_labelled_by_the_training_median(small_root):
    s = read_json(small_root.prepared("heart_rate").with_suffix(".json"))
    d = read_npz(small_root.prepared("heart_rate"))
    assert 450 <= s["beats"] <= 560  # five minutes of record 208
    assert s["threshold_bpm"] == pytest.approx(float(np.median(d["x_train"])), abs=1e-3)
    assert 60 < d["x_train"].min() and d["x_train"].max() < 200
    for split in ("train", "val", "test"):
        assert np.array_equal(d[f"y_{split}"], (d[f"x_{split}"][:, 0] > s["threshold_bpm"]))


def test_normalisation_uses_training_statistics_only(small_root):
    stats = read_json(small_root.norm_stats("heart_rate"))
    d = read_npz(small_root.prepared("heart_rate"))
    assert stats["fit_on"] == "train" and stats["n_fit"] == len(d["x_train"])
    assert stats["mean"][0] == pytest.approx(float(d["x_train"].mean()), rel=1e-6)
    assert stats["mean"][0] != pytest.approx(float(d["x_test"].mean()), rel=1e-6)
    x, _ = load_split("heart_rate", "train", "zscore", small_root)
    assert abs(x.mean().item()) < 1e-5 and x.std(unbiased=False).item() == pytest.approx(1, 1e-4)


def test_download_writes_a_checksum_manifest(small_root):
    raw = small_root.raw("heart_rate")
    manifest = dict(reversed(line.split("  ")) for line in (raw / "SHA256SUMS").read_text().splitlines())
    assert manifest["ecg.dat"] == sha256(raw / "ecg.dat") == ECG_SHA256


def test_corrupt_mirror_file_names_the_file_and_both_hashes(tmp_path, monkeypatch, params):
    mirror = tmp_path / "mirror"
    (mirror / "ecg").mkdir(parents=True)
    (mirror / "ecg" / "ecg.dat").write_bytes(b"not an ecg")
    monkeypatch.setenv("INITLAB_DATA_MIRROR", str(mirror))
    paths = Paths(tmp_path / "root")
    with pytest.raises(DataError) as err:
        download("heart_rate", params.study("heart_rate"), paths)
    msg = str(err.value)
    assert msg.startswith(f"{mirror / 'ecg' / 'ecg.dat'}: checksum mismatch")  # the mirror's file, not a copy
    assert ECG_SHA256 in msg and sha256(mirror / "ecg" / "ecg.dat") in msg
    assert not paths.raw("heart_rate").exists()  # nothing half-written


def test_an_altered_fashion_mnist_mirror_file_is_named_as_the_mirror_file(tmp_path, monkeypatch, params):
    import gzip
    import shutil

    from conftest import MIRROR

    mirror = tmp_path / "mirror"
    shutil.copytree(MIRROR / "fashion-mnist", mirror / "fashion-mnist")
    bad = mirror / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"a valid gzip of the wrong bytes"))
    monkeypatch.setenv("INITLAB_DATA_MIRROR", str(mirror))
    with pytest.raises(DataError) as err:
        download("fashion_mnist", params.study("fashion_mnist"), Paths(tmp_path / "root"))
    msg = str(err.value)
    assert msg.startswith(f"{bad}: checksum mismatch") and "replace it with the original" in msg


def test_missing_mirror_file_is_a_clear_error(tmp_path, monkeypatch, params):
    monkeypatch.setenv("INITLAB_DATA_MIRROR", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="not found in INITLAB_DATA_MIRROR"):
        download("fashion_mnist", params.study("fashion_mnist"), Paths(tmp_path / "root"))


def test_a_table_study_needs_its_files_hash_and_numeric_features(tmp_path, monkeypatch):
    import pandas as pd

    from initlab.errors import DataError, ParamsError
    from initlab.params.schema import StudyParams

    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"a": [0.1, 0.2, 0.3, 0.4], "b": [1, 2, 3, 4], "y": ["no", "yes", "no", "yes"]}).to_csv(
        "t.csv", index=False
    )

    def study(**data) -> StudyParams:
        return StudyParams.model_validate(
            {
                "data": {"kind": "table", "path": "t.csv", "target": "y", **data},
                "split": {},
                "inits": {"z": {"name": "zeros"}},
                "train": {"lr": [0.1], "epochs": 1, "seeds": [0], "inits": ["z"], "losses": ["bce"]},
            }
        )

    digest = sha256(tmp_path / "t.csv")
    with pytest.raises(ParamsError, match=f"set it to {digest}"):
        download("t", study(), Paths())
    download("t", study(sha256=digest), Paths())
    d = read_npz(Paths().raw("t") / "data.npz")
    assert d["x"].shape == (4, 2) and d["y"].tolist() == [0, 1, 0, 1]  # labels in sorted order
    with pytest.raises(ParamsError, match="data.target = 'label' is not a column"):
        download("t", study(sha256=digest, target="label"), Paths())
    pd.DataFrame({"a": ["x", "y"], "y": [0, 1]}).to_csv("t.csv", index=False)
    with pytest.raises(DataError, match="columns a are not numeric"):
        download("t", study(sha256=sha256(tmp_path / "t.csv")), Paths())


def test_deeplearning_ai_circles_are_the_exercises_own_draws(tmp_path, params):
    """circles_dlai: training rows = np.random.seed(1); make_circles(300, noise=.05), test rows =
    np.random.seed(2); make_circles(100, noise=.05), as the exercise's load_dataset draws them;
    validation is a third, separate draw."""
    import sklearn.datasets

    from initlab.core.io import read_npz
    from initlab.params.paths import Paths

    paths = Paths(tmp_path)
    sp = params.study("circles_dlai")
    download("circles_dlai", sp, paths)
    summary = prepare("circles_dlai", sp, paths)
    d = read_npz(paths.prepared("circles_dlai"))
    np.random.seed(1)
    x_train, y_train = sklearn.datasets.make_circles(n_samples=300, noise=0.05)
    np.random.seed(2)
    x_test, y_test = sklearn.datasets.make_circles(n_samples=100, noise=0.05)
    np.testing.assert_array_equal(d["x_train"], x_train.astype(np.float32))
    np.testing.assert_array_equal(d["y_train"], y_train)
    np.testing.assert_array_equal(d["x_test"], x_test.astype(np.float32))
    np.testing.assert_array_equal(d["y_test"], y_test)
    assert summary["sizes"] == {"train": 300, "val": 100, "test": 100}
    assert not np.isin(d["x_val"][:, 0], d["x_test"][:, 0]).any()


def _table_study(**data):
    from initlab.params.schema import StudyParams

    return StudyParams.model_validate(
        {
            "data": {"kind": "table", "path": "t.csv", "target": "y", **data},
            "split": {},
            "inits": {"z": {"name": "zeros"}},
            "train": {"lr": [0.1], "epochs": 1, "seeds": [0], "inits": ["z"], "losses": ["mse"]},
        }
    )


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("a,b,y\n0.1,1,0\n0.2,,1\n0.3,3,0\n", "t.csv: column 'b', row 1 (line 3 of the file): empty"),
        ("a,b,y\n0.1,1,0\n0.2,2,1\ninf,3,0\n", "t.csv: column 'a', row 2 (line 4 of the file): inf"),
        ("a,b,y\n0.1,1,0\n0.2,2,\n", "t.csv: column 'y', row 1 (line 3 of the file): empty"),
        ("a,b,y\n", "t.csv: no rows (a header only)"),
    ],
)
def test_a_table_with_a_hole_names_the_file_the_column_and_the_first_bad_row(tmp_path, monkeypatch, csv, message):
    from initlab.errors import DataError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text(csv)
    with pytest.raises(DataError) as err:
        download("t", _table_study(sha256=sha256(tmp_path / "t.csv")), Paths())
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not Paths().raw("t").exists()


def _rewrite_raw(paths: Paths, study: str, name: str, **arrays) -> None:
    """A raw file rewritten with its manifest updated too (as an older download might have left it)."""
    raw = paths.raw(study)
    with open(raw / name, "wb") as f:
        np.savez(f, **arrays)
    files = [f for f in sorted(raw.rglob("*")) if f.name != "SHA256SUMS"]
    (raw / "SHA256SUMS").write_text("".join(f"{sha256(f)}  {f.relative_to(raw)}\n" for f in files))


def test_prepare_checks_every_value_it_reads(tmp_path, monkeypatch):
    from initlab.errors import DataError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text("a,b,y\n" + "".join(f"{i / 10},{i},{i % 2}\n" for i in range(20)))
    sp = _table_study(sha256=sha256(tmp_path / "t.csv"))
    download("t", sp, Paths())
    d = read_npz(Paths().raw("t") / "data.npz")
    d["x"][7, 1] = np.nan
    _rewrite_raw(Paths(), "t", "data.npz", **d)
    with pytest.raises(DataError, match=r"data.npz \(x\): column 'b', row 7: empty"):
        prepare("t", sp, Paths())
    assert not Paths().prepared("t").exists()


def test_prepare_refuses_a_raw_file_changed_since_download(small_root, tmp_path, params):
    import shutil

    from initlab.errors import DataError

    paths = Paths(tmp_path)
    shutil.copytree(small_root.raw("line"), paths.raw("line"))
    f = paths.raw("line") / "line.npz"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3] ^= 1  # inside a member: the zip container is whole, its CRC no longer matches
    f.write_bytes(bytes(raw))
    with pytest.raises(
        DataError,
        match=r"line.npz: changed since download \(sha256 .*; run `dvc repro -f "
        r"download@line`",
    ):
        prepare("line", params.study("line"), paths)
    (paths.raw("line") / "SHA256SUMS").unlink()
    with pytest.raises(DataError, match="SHA256SUMS: missing; run `dvc repro -f download@line`"):
        prepare("line", params.study("line"), paths)
    assert not paths.prepared("line").exists()


@pytest.mark.parametrize(
    ("study", "change", "message"),
    [
        (
            "heart_rate",
            {"data": {"peak_distance": 10**6}},
            "studies.heart_rate.data.peak_distance = 1000000 leaves 0 beats in the record, too few to split",
        ),
        (
            "line",
            {"split": {"train_subset": 41}},
            "studies.line.split.train_subset = 41 is more than the train split's 40 rows; allowed: up to 40",
        ),
        ("circles", {"split": {"test_subset": 10**4}}, "studies.circles.split.test_subset = 10000 is more than"),
    ],
)
def test_params_the_data_cannot_take_are_refused_at_prepare(small_root, tmp_path, params, study, change, message):
    import shutil

    from initlab.errors import ParamsError

    paths = Paths(tmp_path)
    shutil.copytree(small_root.raw(study), paths.raw(study))
    raw = params.study(study).model_dump(exclude_unset=True)
    for key, value in change.items():
        raw[key] = {**raw[key], **value}
    with pytest.raises(ParamsError, match=message):
        prepare(study, type(params.study(study)).model_validate(raw), paths)
    assert not paths.prepared(study).exists()


def test_too_few_table_rows_for_the_split_name_the_split(tmp_path, monkeypatch):
    from initlab.errors import ParamsError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text("a,y\n0.1,0\n0.2,1\n0.3,0\n")
    sp = _table_study(sha256=sha256(tmp_path / "t.csv"))
    download("t", sp, Paths())
    with pytest.raises(
        ParamsError,
        match=r"studies.t.split: 3 rows are too few to split with val_fraction = 0.2, "
        r"test_fraction = 0.2 \(scikit-learn: ",
    ):
        prepare("t", sp, Paths())
