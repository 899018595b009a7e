"""Each study's raw data: from its source (by kind), written under ``pipeline/raw/<study>``.

Raw files come from the official sources, or from the folder ``INITLAB_DATA_MIRROR`` names
(layout ``fashion-mnist/*.gz`` and ``ecg/ecg.dat``); either way their SHA-256 must match the
published content.
"""

from __future__ import annotations

import gzip
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from initlab.core.io import atomic_path, sha256, write_npz
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
    check_finite(src.path, df[src.target].isna().to_numpy()[:, None], [src.target], header)
    x = features.to_numpy(dtype=np.float32)
    check_finite(src.path, x, [str(c) for c in features.columns], header)
    classes, y = np.unique(df[src.target].to_numpy(), return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{src.path}: column {src.target!r} holds one class; a study needs two or more")
    return {"x": x, "y": y.astype(np.int64), "columns": np.array([str(c) for c in features.columns])}


def check_finite(
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
