"""Data: shapes, checksums, disjoint splits, statistics from the training split only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from initlab import data
from initlab.config import Paths
from initlab.io import read_json, read_npz, sha256


def test_line_is_seed_000s_training_set_and_a_disjoint_holdout(small_root):
    d = read_npz(small_root.prepared("line"))
    assert d["x_train"].shape == (40, 1)
    x = torch.arange(-2, 2, 0.1).view(-1, 1)  # the seed's own construction
    assert np.array_equal(d["x_train"], x.numpy())
    assert np.array_equal(d["y_train"], (x[:, 0] > 0.2).long().numpy())
    held = np.concatenate([d["x_val"], d["x_test"]])[:, 0]
    assert not np.isin(np.round(held, 4), np.round(d["x_train"][:, 0], 4)).any()
    assert np.array_equal(np.concatenate([d["y_val"], d["y_test"]]),
                          (np.concatenate([d["x_val"], d["x_test"]])[:, 0] > 0.2).astype(int))


def test_circles_splits_are_disjoint_and_cover_the_data(small_root):
    d = read_npz(small_root.prepared("circles"))
    points = [{tuple(r) for r in d[f"x_{s}"].round(6)} for s in ("train", "val", "test")]
    assert sum(len(p) for p in points) == len(set().union(*points)) == 500  # no point in two splits


def test_heart_rate_splits_are_disjoint_beats_and_cover_the_record(small_root, params):
    from initlab.data import heart_rate_bpm

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
    x, _ = data.load_split("heart_rate", "train", "zscore", small_root)
    assert abs(x.mean().item()) < 1e-5 and x.std(unbiased=False).item() == pytest.approx(1, 1e-4)


def test_download_writes_a_checksum_manifest(small_root):
    raw = small_root.raw("heart_rate")
    manifest = dict(reversed(line.split("  ")) for line in
                    (raw / "SHA256SUMS").read_text().splitlines())  # fmt: skip
    assert manifest["ecg.dat"] == sha256(raw / "ecg.dat") == data.ECG_SHA256


def test_corrupt_mirror_file_names_the_file_and_both_hashes(tmp_path, monkeypatch, params):
    mirror = tmp_path / "mirror"
    (mirror / "ecg").mkdir(parents=True)
    (mirror / "ecg" / "ecg.dat").write_bytes(b"not an ecg")
    monkeypatch.setenv("INITLAB_DATA_MIRROR", str(mirror))
    paths = Paths(tmp_path / "root")
    with pytest.raises(data.DataError) as err:
        data.download("heart_rate", params.study("heart_rate"), paths)
    msg = str(err.value)
    assert msg.startswith(f"{mirror / 'ecg' / 'ecg.dat'}: checksum mismatch")  # the mirror's file, not a copy
    assert data.ECG_SHA256 in msg and sha256(mirror / "ecg" / "ecg.dat") in msg
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
    with pytest.raises(data.DataError) as err:
        data.download("fashion_mnist", params.study("fashion_mnist"), Paths(tmp_path / "root"))
    msg = str(err.value)
    assert msg.startswith(f"{bad}: checksum mismatch") and "replace it with the original" in msg


def test_missing_mirror_file_is_a_clear_error(tmp_path, monkeypatch, params):
    monkeypatch.setenv("INITLAB_DATA_MIRROR", str(tmp_path / "empty"))
    with pytest.raises(data.DataError, match="not found in INITLAB_DATA_MIRROR"):
        data.download("fashion_mnist", params.study("fashion_mnist"), Paths(tmp_path / "root"))


def test_a_table_study_needs_its_files_hash_and_numeric_features(tmp_path, monkeypatch):
    import pandas as pd

    from initlab.config import DataError, ParamsError, StudyParams

    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"a": [0.1, 0.2, 0.3, 0.4], "b": [1, 2, 3, 4], "y": ["no", "yes", "no", "yes"]}).to_csv(
        "t.csv", index=False)  # fmt: skip

    def study(**data) -> StudyParams:
        return StudyParams.model_validate({
            "title": "t", "data": {"kind": "table", "path": "t.csv", "target": "y", **data}, "split": {},
            "inits": {"z": {"name": "zeros"}},
            "train": {"lr": [0.1], "epochs": 1, "seeds": [0], "inits": ["z"], "losses": ["bce"]}})  # fmt: skip

    digest = sha256(tmp_path / "t.csv")
    with pytest.raises(ParamsError, match=f"set it to {digest}"):
        data.download("t", study(), Paths())
    data.download("t", study(sha256=digest), Paths())
    d = read_npz(Paths().raw("t") / "data.npz")
    assert d["x"].shape == (4, 2) and d["y"].tolist() == [0, 1, 0, 1]  # labels in sorted order
    with pytest.raises(ParamsError, match="data.target = 'label' is not a column"):
        data.download("t", study(sha256=digest, target="label"), Paths())
    pd.DataFrame({"a": ["x", "y"], "y": [0, 1]}).to_csv("t.csv", index=False)
    with pytest.raises(DataError, match="columns a are not numeric"):
        data.download("t", study(sha256=sha256(tmp_path / "t.csv")), Paths())


def test_deeplearning_ai_circles_are_the_exercises_own_draws(tmp_path, params):
    """circles_dlai: training rows = np.random.seed(1); make_circles(300, noise=.05), test rows =
    np.random.seed(2); make_circles(100, noise=.05), as the exercise's load_dataset draws them;
    validation is a third, separate draw."""
    import sklearn.datasets

    from initlab import data
    from initlab.config import Paths
    from initlab.io import read_npz

    paths = Paths(tmp_path)
    sp = params.study("circles_dlai")
    data.download("circles_dlai", sp, paths)
    summary = data.prepare("circles_dlai", sp, paths)
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
