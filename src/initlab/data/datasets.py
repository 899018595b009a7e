"""Data for any study: its source (by kind), seeded splits, normalisation statistics.

Raw files come from the official sources, or from the folder ``INITLAB_DATA_MIRROR`` names
(layout ``fashion-mnist/*.gz`` and ``ecg/ecg.dat``); either way their SHA-256 must match the
published content. The test split is never used for training, statistics or model choice.
"""

from __future__ import annotations

import gzip
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from initlab.core.io import atomic_path, read_json, read_npz, sha256, write_json, write_npz
from initlab.errors import DataError, ParamsError
from initlab.params.paths import Paths, data_mirror
from initlab.params.schema import StudyParams
from initlab.params.sources import EcgSource, LineSource, SklearnSource, TableSource, TorchvisionSource

# SHA-256 of the decompressed Fashion-MNIST release files (content, not the .gz wrapper).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# The ECG SciPy's registry serves as scipy.datasets.electrocardiogram(): MIT-BIH record 208.
ECG_SHA256 = "f20ad3365fb9b7f845d0e5c48b6fe67081377ee466c3a220b7f69f35c8958baf"

MIRROR_HINT = "set INITLAB_DATA_MIRROR to a folder holding fashion-mnist/ and ecg/"


def verify(path: Path, expected: str, source: Path | None = None) -> None:
    """Check ``path``'s SHA-256; an error names ``source`` (a mirror's file) where it came from one."""
    actual = sha256(path)
    if actual != expected:
        fix = "replace it with the original" if source else "delete it and download again"
        raise DataError(
            f"{source or path}: checksum mismatch: expected sha256 {expected}, got {actual}; "
            f"the file is truncated or altered; {fix}"
        )


# --------------------------------------------------------------------------- download


def _line(lp: LineSource) -> dict[str, np.ndarray]:
    import torch  # seed 000's x is torch.arange in float32

    # Seed 000's exact training set, built the way the seed builds it (float32 arange).
    x = torch.arange(lp.start, lp.stop, lp.step).view(-1, 1)
    rng = np.random.default_rng(lp.holdout_seed)
    pool = rng.uniform(lp.start, lp.stop, size=(lp.holdout_points * 2, 1)).astype(np.float32)
    # Held-out points follow the same rule and share no x value with the training set.
    far = np.abs(pool - x.numpy().reshape(1, -1)).min(axis=1) > 1e-3
    holdout = pool[far][: lp.holdout_points]
    return {
        "x_train": x.numpy(),
        "y_train": (x.numpy()[:, 0] > lp.threshold).astype(np.int64),
        "x_holdout": holdout,
        "y_holdout": (holdout[:, 0] > lp.threshold).astype(np.int64),
    }


def _sklearn(src: SklearnSource) -> dict[str, np.ndarray]:
    """``x``, ``y`` from ``args``; with ``val_args`` and ``test_args``, also ``x_val`` ... ``y_test``,
    each from its own call (``args`` updated by them)."""
    import sklearn.datasets

    out = {}
    calls = {"": src.args}
    if src.val_args is not None and src.test_args is not None:
        calls.update(_val={**src.args, **src.val_args}, _test={**src.args, **src.test_args})
    for suffix, args in calls.items():
        try:
            x, y = getattr(sklearn.datasets, src.generator)(**args)
        except (TypeError, ValueError) as exc:
            key = f"{suffix.lstrip('_')}_args" if suffix else "args"
            raise ParamsError(f"data.{key} of {src.generator}: {exc}") from None
        out[f"x{suffix}"], out[f"y{suffix}"] = x.astype(np.float32), y.astype(np.int64)
    return out


def _table(src: TableSource) -> dict[str, np.ndarray]:
    import pandas as pd

    if not src.path.is_file():
        raise DataError(f"{src.path}: not found (data.path of a table study, relative to the project root)")
    actual = sha256(src.path)
    if src.sha256 != actual:
        raise ParamsError(
            f"data.sha256 = {src.sha256!r} is not the hash of {src.path}; set it to {actual} "
            "(DVC re-runs the study when it changes)"
        )
    try:
        df = pd.read_parquet(src.path) if src.path.suffix.lower() == ".parquet" else pd.read_csv(src.path)
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(f"{src.path}: cannot be read as a table ({exc})") from None
    if src.target not in df.columns:
        raise ParamsError(
            f"data.target = {src.target!r} is not a column of {src.path}; "
            f"allowed: {', '.join(map(str, df.columns))}"
        )
    if len(df) == 0:  # pandas reads a header alone as columns of no type: say so, not "not numeric"
        raise DataError(f"{src.path}: no rows (a header only); a study needs rows of data")
    features = df.drop(columns=[src.target])
    bad = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise DataError(f"{src.path}: columns {', '.join(bad)} are not numeric; features must be numbers")
    header = 2 if src.path.suffix.lower() == ".csv" else None  # a CSV's row 0 is its line 2
    _check_finite(src.path, df[src.target].isna().to_numpy()[:, None], [src.target], header)
    x = features.to_numpy(dtype=np.float32)
    _check_finite(src.path, x, [str(c) for c in features.columns], header)
    classes, y = np.unique(df[src.target].to_numpy(), return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{src.path}: column {src.target!r} holds one class; a study needs two or more")
    return {"x": x, "y": y.astype(np.int64), "columns": np.array([str(c) for c in features.columns])}


def _check_finite(
    path: Path, x: np.ndarray, columns: list[str] | None = None, first_line: int | None = None, what: str = ""
) -> None:
    """Refuse a table with an empty (NaN) or infinite value, naming ``path``, the column and the
    first bad row (and its line, for a file with a header). A bool ``x`` marks the bad cells."""
    bad = x if x.dtype == bool else ~np.isfinite(x) if np.issubdtype(x.dtype, np.floating) else None
    if bad is None or not bad.any():
        return
    x2, bad2 = x.reshape(len(x), -1), bad.reshape(len(bad), -1)
    row = int(np.flatnonzero(bad2.any(axis=1))[0])
    col = int(np.flatnonzero(bad2[row])[0])
    name = repr(columns[col]) if columns else str(col)
    value = "empty" if x2.dtype == bool or np.isnan(x2[row, col]) else f"{float(x2[row, col])}"
    line = f" (line {row + first_line} of the file)" if first_line else ""
    raise DataError(
        f"{path}{what}: column {name}, row {row}{line}: {value}; every value must be a finite number; "
        "fill or drop that row"
    )


def _fetch(url: str, dest: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"cannot download {url}: {exc}; no network? {MIRROR_HINT}") from None


def _torchvision(out: Path, src: TorchvisionSource) -> None:
    if src.dataset == "FashionMNIST":
        _fashion_mnist(out, src.url)
        return
    import torchvision.datasets

    cls = getattr(torchvision.datasets, src.dataset)
    if src.url:
        cls.mirrors = [src.url]
    try:
        for train in (True, False):
            cls(out, train=train, download=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise DataError(f"cannot download {src.dataset}: {exc}; no network?") from None


def _fashion_mnist(out: Path, url: str | None) -> None:
    raw = out / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    mirror = data_mirror()
    if mirror is not None:
        for name in FASHION_MNIST_SHA256:
            src = mirror / "fashion-mnist" / f"{name}.gz"
            if not src.exists():
                raise DataError(f"{src}: not found in INITLAB_DATA_MIRROR={mirror}")
            with gzip.open(src, "rb") as fin, open(raw / name, "wb") as fout:
                try:
                    shutil.copyfileobj(fin, fout)
                except (OSError, EOFError) as exc:
                    raise DataError(f"{src}: corrupt gzip ({exc}); replace the file") from None
            verify(raw / name, FASHION_MNIST_SHA256[name], source=src)
    else:
        from torchvision.datasets import FashionMNIST

        if url:
            FashionMNIST.mirrors = [url]
        try:
            for train in (True, False):
                FashionMNIST(out, train=train, download=True)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise DataError(f"cannot download Fashion-MNIST: {exc}; no network? {MIRROR_HINT}") from None
        for gz in raw.glob("*.gz"):
            gz.unlink()
        for name, expected in FASHION_MNIST_SHA256.items():
            verify(raw / name, expected)


def _ecg(out: Path, url: str) -> None:
    out.mkdir(parents=True)
    dest = out / "ecg.dat"
    mirror = data_mirror()
    if mirror is not None:
        src = mirror / "ecg" / "ecg.dat"
        if not src.exists():
            raise DataError(f"{src}: not found in INITLAB_DATA_MIRROR={mirror}")
        shutil.copyfile(src, dest)
    else:
        _fetch(url, dest)
    verify(dest, ECG_SHA256, source=src if mirror is not None else None)


def download(study: str, sp: StudyParams, paths: Paths) -> Path:
    """Write the raw data of one study to ``pipeline/raw/<study>/`` with a SHA256SUMS manifest:
    generated (line, scikit-learn), fetched (ECG, torchvision) or copied (a table)."""
    target = paths.raw(study)
    src = sp.data
    with atomic_path(target) as out:
        if isinstance(src, LineSource):
            out.mkdir()
            write_npz(out / "line.npz", **_line(src))
        elif isinstance(src, SklearnSource | TableSource):
            arrays = _sklearn(src) if isinstance(src, SklearnSource) else _table(src)
            out.mkdir()
            write_npz(out / "data.npz", **arrays)
        elif isinstance(src, EcgSource):
            _ecg(out, src.url)
        else:
            _torchvision(out, src)
        files = sorted(f for f in out.rglob("*") if f.is_file())
        (out / "SHA256SUMS").write_text("".join(f"{sha256(f)}  {f.relative_to(out)}\n" for f in files))
    return target


# --------------------------------------------------------------------------- prepare


def check_raw(study: str, paths: Paths) -> None:
    """The raw files as download wrote them: each listed in its ``SHA256SUMS`` with its hash. A
    file changed since (edited, truncated, a container with a bad CRC inside) is one line."""
    from initlab.core.io import unreadable

    raw = paths.raw(study)
    if not raw.exists():  # the file prepare reads is named missing, with the stage to run
        return
    sums = raw / "SHA256SUMS"
    try:
        lines = sums.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise unreadable(sums, exc) from None
    fix = f"run `dvc repro -f download@{study}`"
    for line in lines:
        expected, _, name = line.partition("  ")
        f = raw / name
        if not f.is_file():
            raise DataError(f"{f}: missing (listed in {sums}); {fix}")
        actual = sha256(f)
        if actual != expected:
            raise DataError(f"{f}: changed since download (sha256 {actual}, {sums} says {expected}); {fix}")


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
        _check_finite(raw / "line.npz", np.concatenate([d["x_train"], d["x_holdout"]]))
    elif isinstance(src, SklearnSource | TableSource):
        d = read_npz(raw / "data.npz")
        columns = [str(c) for c in d["columns"]] if "columns" in d else None
        for k in (k for k in d if k.startswith("x")):
            _check_finite(raw / "data.npz", d[k], columns, what=f" ({k})")
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


def normalize_stats(study: str, paths: Paths) -> dict:
    """Statistics for each normalisation, computed from the training split only.

    ``scale`` maps raw values to model inputs (Fashion-MNIST pixels to [0, 1], seed 001);
    ``zscore`` is (x * scale - mean) / std per feature; ``batchnorm`` is a BatchNorm1d input
    layer inside the model (seed 002), so it uses the unscaled-by-statistics inputs.
    """
    d = read_npz(paths.prepared(study), ("x_train",), study=study)
    scale = 1 / 255 if d["x_train"].dtype == np.uint8 else 1.0
    x = d["x_train"].astype(np.float64) * scale
    std = x.std(axis=0)
    stats = {
        "study": study,
        "fit_on": "train",
        "n_fit": int(len(x)),
        "scale": scale,
        "mean": x.mean(axis=0).tolist(),
        "std": np.where(std > 1e-8, std, 1.0).tolist(),
    }
    write_json(paths.norm_stats(study), stats)
    return stats


def load_split(study: str, split: str, normalize: str, paths: Paths, device: str = "cpu") -> tuple:
    """Model inputs and labels of one split, normalised with training-split statistics."""
    import torch

    d = read_npz(paths.prepared(study), (f"x_{split}", f"y_{split}"), study=study)
    stats = read_json(paths.norm_stats(study), study=study)
    x = torch.from_numpy(d[f"x_{split}"]).to(device=device, dtype=torch.float32)
    if stats["scale"] != 1.0:
        x = x * stats["scale"]
    if normalize == "zscore":
        mean = torch.tensor(stats["mean"], dtype=torch.float32, device=device)
        std = torch.tensor(stats["std"], dtype=torch.float32, device=device)
        x = (x - mean) / std
    return x, torch.from_numpy(d[f"y_{split}"]).to(device)


def shuffled_split(
    study: str, normalize: str, paths: Paths, seed: int, val_fraction: float, device: str = "cpu"
) -> dict:
    """Seed 001's split of the training pool (the training and validation rows, back in the
    dataset's order): ``np.random.shuffle`` of its indices, seeded by ``seed``; the first
    ``floor(val_fraction * n)`` are validation, the rest training. Not stratified."""
    import torch

    (x_tr, y_tr), (x_va, y_va) = (load_split(study, s, normalize, paths, device) for s in ("train", "val"))
    x, y = torch.cat([x_tr, x_va]), torch.cat([y_tr, y_va])
    d = read_npz(paths.prepared(study), study=study)
    if "index_train" in d:  # back to the dataset's order, which the seed's indices count in
        order = torch.from_numpy(np.argsort(np.concatenate([d["index_train"], d["index_val"]]), kind="stable"))
        x, y = x[order.to(device)], y[order.to(device)]
    indices = np.arange(len(y))
    np.random.RandomState(seed).shuffle(indices)  # = np.random.seed(seed); np.random.shuffle(indices)
    split = int(np.floor(val_fraction * len(y)))
    val, train = (torch.from_numpy(i).to(device) for i in (indices[:split], indices[split:]))
    return {"x_train": x[train], "y_train": y[train], "x_val": x[val], "y_val": y[val]}
