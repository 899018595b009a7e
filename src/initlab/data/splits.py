"""Normalisation statistics of the training split, and a prepared split read back as tensors,
normalised as a variant asks."""

from __future__ import annotations

import numpy as np

from initlab.core.io import read_json, read_npz, write_json
from initlab.params.paths import Paths


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
