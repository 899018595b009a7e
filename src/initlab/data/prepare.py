"""Each study's prepared data: features and labels in seeded, stratified train, validation and
test splits. The test split is never used for training, statistics or model choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from initlab.core.io import read_npz, write_json, write_npz
from initlab.data.raw import check_finite, check_raw
from initlab.errors import DataError, ParamsError
from initlab.params.paths import Paths
from initlab.params.schema import StudyParams
from initlab.params.sources import EcgSource, LineSource, SklearnSource, TableSource


def _split(refuse: str, *arrays, **kwargs) -> list:
    """scikit-learn's ``train_test_split``; a split the rows cannot give (too few rows, or of a
    class) is a ``ParamsError``: ``refuse`` with ``{n}`` (the rows) and ``{why}`` (scikit-learn's
    reason) filled in, naming the keys that set the rows and the fractions."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(*arrays, **kwargs)
    except ValueError as exc:
        raise ParamsError(refuse.format(n=len(arrays[0]), why=" ".join(str(exc).split()))) from None


def heart_rate_bpm(ecg_dat: Path, sampling_hz: float, peak_distance: int) -> np.ndarray:
    """Beat-to-beat heart rate (bpm) from R-peaks of the ECG found with scipy.signal.find_peaks."""
    from scipy.signal import find_peaks

    with np.load(ecg_dat, allow_pickle=False) as z:
        mv = (z["ecg"].astype(np.float64) - 1024) / 200
    peaks, _ = find_peaks(mv, distance=peak_distance)
    return (60.0 * sampling_hz / np.diff(peaks)).astype(np.float32)


def _split3(x, y, val: float, test: float, seed: int, where: str):
    x_rest, x_test, y_rest, y_test = _split(where, x, y, test_size=test, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = _split(
        where, x_rest, y_rest, test_size=val / (1 - test), stratify=y_rest, random_state=seed
    )
    return x_train, y_train, x_val, y_val, x_test, y_test


def _balance(y: np.ndarray, n_classes: int) -> list[float]:
    return (np.bincount(y, minlength=n_classes) / len(y)).round(4).tolist()


def prepare(study: str, sp: StudyParams, paths: Paths) -> dict:
    """Seeded, stratified train / validation / test splits of one study; returns a summary."""
    raw, src, sp_split = paths.raw(study), sp.data, sp.split
    seed = sp_split.seed
    summary: dict = {"study": study, "seed": seed}
    extra: dict[str, np.ndarray] = {}  # more arrays for the npz
    fractions = f"val_fraction = {sp_split.val_fraction:g}, test_fraction = {sp_split.test_fraction:g}"
    where = (
        f"studies.{study}.split: {{n}} rows are too few to split with {fractions} "
        "(scikit-learn: {why}); allowed: more rows, or other fractions"
    )
    check_raw(study, paths)  # before reading any of them
    if isinstance(src, LineSource):
        d = read_npz(raw / "line.npz")
        x_val, x_test, y_val, y_test = _split(
            f"studies.{study}.data.holdout_points = {src.holdout_points}: {{n}} held-out points are too few to "
            f"split with val_fraction = {sp_split.val_fraction:g} (scikit-learn: {{why}}); allowed: more points",
            d["x_holdout"],
            d["y_holdout"],
            train_size=sp_split.val_fraction,
            stratify=d["y_holdout"],
            random_state=seed,
        )
        splits = (d["x_train"], d["y_train"], x_val, y_val, x_test, y_test)
        check_finite(raw / "line.npz", np.concatenate([d["x_train"], d["x_holdout"]]))
    elif isinstance(src, SklearnSource | TableSource):
        d = read_npz(raw / "data.npz")
        columns = [str(c) for c in d["columns"]] if "columns" in d else None
        for k in (k for k in d if k.startswith("x")):
            check_finite(raw / "data.npz", d[k], columns, what=f" ({k})")
        if "x_test" in d:  # held-out splits drawn by their own calls: no split of the training rows
            splits = (d["x"], d["y"], d["x_val"], d["y_val"], d["x_test"], d["y_test"])
        else:
            splits = _split3(d["x"], d["y"], sp_split.val_fraction, sp_split.test_fraction, seed, where)
    elif isinstance(src, EcgSource):
        h = src
        bpm = heart_rate_bpm(raw / "ecg.dat", h.sampling_hz, h.peak_distance)
        # Split on the beat, label after: the threshold may only come from the training split.
        idx = np.arange(len(bpm))
        beats = (
            f"studies.{study}.data.peak_distance = {h.peak_distance} leaves {{n}} beats in the record, too "
            f"few to split with studies.{study}.split's {fractions} (scikit-learn: {{why}}); allowed: a "
            "shorter distance between R-peaks (samples; scipy's ECG example: 150)"
        )
        i_rest, i_test = _split(beats, idx, test_size=sp_split.test_fraction, random_state=seed)
        i_train, i_val = _split(
            beats, i_rest, test_size=sp_split.val_fraction / (1 - sp_split.test_fraction), random_state=seed
        )
        threshold = float(np.median(bpm[i_train])) if h.threshold_bpm is None else h.threshold_bpm
        lo, hi = float(bpm[i_train].min()), float(bpm[i_train].max())
        if not lo < threshold < hi:
            # A threshold given in params.yaml is a params error (exit 2); the median is the data's.
            error = DataError if h.threshold_bpm is None else ParamsError
            raise error(
                f"studies.{study}.data.threshold_bpm = {threshold:g} leaves one class empty; "
                f"allowed: between the training split's min {lo:.2f} and max {hi:.2f} bpm, "
                "or null for its median"
            )
        label = (bpm > threshold).astype(np.int64)
        splits = tuple(a for i in (i_train, i_val, i_test) for a in (bpm[i, None], label[i]))
        extra = {"beat_train": i_train, "beat_val": i_val, "beat_test": i_test}  # which beat a row is
        summary.update(
            threshold_bpm=round(threshold, 4),
            beats=int(len(bpm)),
            bpm_mean=round(float(bpm.mean()), 2),
            bpm_std=round(float(bpm.std()), 2),
        )
    else:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, src.dataset)
        train, test = cls(raw, train=True, download=False), cls(raw, train=False, download=False)
        x, y = np.asarray(train.data).reshape(len(train.data), -1), np.asarray(train.targets)
        i_train, i_val = _split(
            where, np.arange(len(y)), test_size=sp_split.val_fraction, stratify=y, random_state=seed
        )
        x_train, x_val, y_train, y_val = x[i_train], x[i_val], y[i_train], y[i_val]
        extra = {"index_train": i_train, "index_val": i_val}  # rows of the dataset: its order
        x_test = np.asarray(test.data).reshape(len(test.data), -1)
        y_test = np.asarray(test.targets)
        splits = (x_train, y_train, x_val, y_val, x_test, y_test)
    x_train, y_train, x_val, y_val, x_test, y_test = splits
    if len(np.unique(y_train)) < 2:
        raise ParamsError(
            f"studies.{study}.data: every training row is of class {int(y_train[0])}; "
            "allowed: data with two classes or more (a threshold inside its range)"
        )
    for key, n, rows in (
        ("train_subset", sp_split.train_subset, len(y_train)),
        ("test_subset", sp_split.test_subset, len(y_test)),
    ):
        if n is not None and n > rows:  # "the first N" of fewer rows would silently be all of them
            split = key.removesuffix("_subset")
            raise ParamsError(
                f"studies.{study}.split.{key} = {n} is more than the {split} split's {rows} rows; "
                f"allowed: up to {rows}, or null for all of them"
            )
    if sp_split.train_subset:  # the CI profile: a few thousand images
        x_train, y_train = x_train[: sp_split.train_subset], y_train[: sp_split.train_subset]
        n_val = max(sp_split.train_subset // 4, 10)
        x_val, y_val = x_val[:n_val], y_val[:n_val]
        for k, n in (("index_train", len(x_train)), ("index_val", n_val)):
            if k in extra:
                extra[k] = extra[k][:n]
    if sp_split.test_subset:
        x_test, y_test = x_test[: sp_split.test_subset], y_test[: sp_split.test_subset]
    n_classes = int(max(y_train.max(), y_val.max(), y_test.max())) + 1
    write_npz(
        paths.prepared(study),
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        **extra,
        study=np.array(study),
    )
    majority = int(np.bincount(y_train, minlength=n_classes).argmax())
    summary.update(
        n_classes=n_classes,
        sizes={"train": len(y_train), "val": len(y_val), "test": len(y_test)},
        class_balance={
            s: _balance(y, n_classes) for s, y in (("train", y_train), ("val", y_val), ("test", y_test))
        },
        majority_class=majority,
        majority_baseline_test=round(float((y_test == majority).mean()), 4),
    )
    write_json(paths.prepared(study).with_suffix(".json"), summary)
    return summary


# --------------------------------------------------------------------------- normalize
