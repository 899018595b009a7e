"""Training a study: every variant of it, grouped so that models reading the same batches train
together in one ``StackedMLP``; each model's result equals training it alone.

A group is the set of variants that read the same batches in the same order (the seed, when
batches are shuffled). Inside it models differ by initialiser, loss, learning rate and seed, and
on small data by input normalisation (``group_key``); BatchNorm models keep their own group.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm.auto import tqdm

from initlab.params.paths import Paths
from initlab.params.schema import Params, StudyTrain
from initlab.params.variants import Variant, variants
from initlab.training.checks import check_fits_data, check_fits_memory
from initlab.training.loop import Result, train_group
from initlab.training.stacks import Stack, keep_freed_memory, run_stacks, stacks_for

if TYPE_CHECKING:
    from initlab.training.cluster import RayEngine

STACKED_INPUT_BYTES = 64 << 20


def group_key(v: Variant, st: StudyTrain, n_train: int, input_bytes: int = 0) -> tuple:
    """Models train together when they read the same batches in the same order (the seed, when
    shuffled). Loss, initialiser, learning rate and seed may differ inside a group. Inputs
    normalised differently (none, z-score) share a group when a copy of the training inputs per
    model is small (``input_bytes`` for the whole study, below 64 MiB: heart rate, circles);
    the first layer then multiplies each model's own input. BatchNorm models keep their own."""
    shuffled = st.shuffle and (st.batch_size or n_train) < n_train
    norm = v.normalize
    if norm != "batchnorm" and input_bytes <= STACKED_INPUT_BYTES:
        norm = "shared"
    return (v.reproduce, v.model, norm, v.seed if shuffled else None)


def group_data(group: list[Variant], by_norm: dict[str, dict]) -> dict[str, Tensor]:
    """The group's inputs: one ``(n, in)`` tensor when every model reads the same, else
    ``(M, n, in)`` with model m's own normalisation."""
    norms = ["none" if v.normalize == "batchnorm" else v.normalize for v in group]
    if len(set(norms)) == 1:
        return by_norm[norms[0]]
    first = by_norm[norms[0]]
    out = dict(first)
    for key in ("x_train", "x_val"):
        out[key] = torch.stack([by_norm[nm][key] for nm in norms])
    return out


def load_study_data(study: str, normalize: str, paths: Paths, device: str, all_data: bool):
    from initlab.data.splits import load_split

    data = {}
    for split in ("train", "val"):
        data[f"x_{split}"], data[f"y_{split}"] = load_split(study, split, normalize, paths, device)
    if all_data:  # the seed's own run: every point for training (and so no held-out test)
        x_test, y_test = load_split(study, "test", normalize, paths, device)
        data["x_train"] = torch.cat([data["x_train"], data["x_val"], x_test])
        data["y_train"] = torch.cat([data["y_train"], data["y_val"], y_test])
    return data


def train_study(
    params: Params,
    study: str,
    paths: Paths,
    device: str = "cpu",
    show_progress: bool | None = None,
    engine: RayEngine | None = None,
) -> list[Result]:
    """Train every variant of ``study``; returns results in ``variants()`` order.

    With ``engine``, the stacks run as tasks on its Ray cluster (``initlab.training.cluster``),
    with the same bits; the platform they ran on is left in ``engine.platform``."""
    from initlab.core.io import read_json
    from initlab.data.splits import shuffled_split

    sp = params.study(study)
    st: StudyTrain = sp.train
    summary = read_json(paths.prepared(study).with_suffix(".json"), study=study)
    n_classes = summary["n_classes"]
    n_train = summary["sizes"]["train"]
    vs = variants(params, study)
    check_fits_data(study, st, vs, n_classes, n_train)
    data_device = "cpu" if engine is not None else device  # a driver needs no GPU
    cache: dict[tuple, dict] = {("none", False): load_study_data(study, "none", paths, data_device, False)}
    input_bytes = 4 * cache["none", False]["x_train"].numel() * len(vs)
    groups: dict[tuple, list[Variant]] = defaultdict(list)
    for v in sorted(vs, key=lambda v: v.lr):  # equal learning rates adjacent: one optimiser block
        groups[group_key(v, st, n_train, input_bytes)].append(v)
    if engine is None:  # a cluster's nodes have their own memory (Ray reports a task it kills)
        check_fits_memory(
            study, st, list(groups.values()), cache["none", False]["x_train"].shape[-1], n_classes, device
        )
        keep_freed_memory()
    total = sum(len(g) * st.epochs for g in groups.values())  # model-epochs
    stacks = []
    for group in groups.values():
        v0 = group[0]
        all_data = v0.reproduce and bool(st.reproduce and st.reproduce.all_data)
        shuffled = v0.reproduce and st.reproduce is not None and st.reproduce.split == "shuffle"
        by_norm = {}
        for v in group:
            norm = "none" if v.normalize == "batchnorm" else v.normalize
            if shuffled:  # seed 001's split, its own for each seed (a group is one seed)
                by_norm[norm] = shuffled_split(study, norm, paths, v0.seed, sp.split.val_fraction, data_device)
                continue
            dkey = (norm, all_data)
            if dkey not in cache:
                cache[dkey] = load_study_data(study, norm, paths, data_device, all_data)
            by_norm[norm] = cache[dkey]
        stacks += stacks_for(st, group, group_data(group, by_norm), n_classes, device)
    results: dict[Variant, Result] = {}
    disable = None if show_progress is None else not show_progress  # None: only on a terminal
    if engine is not None:
        from initlab.training.cluster import run_on_ray

        with tqdm(total=len(stacks), desc=f"train {study} on ray", unit="stack", disable=disable) as bar:
            outs, engine.platform = run_on_ray(
                engine, stacks, st, sp.inits, n_classes, device, lambda k, s: bar.update()
            )
        for out in outs:
            results.update((r.variant, r) for r in out)
        return [results[v] for v in vs]
    with tqdm(total=total, desc=f"train {study}", unit="model-epoch", disable=disable) as bar:

        def train_stack(s: Stack, stop: threading.Event | None) -> list[Result]:
            t0 = time.perf_counter()
            out = train_group(st, s.group, sp.inits, s.data, n_classes, device, bar, stop)
            for r in out:
                r.seconds = (time.perf_counter() - t0) / len(s.group)
            return out

        for out in run_stacks(stacks, train_stack, device):
            results.update((r.variant, r) for r in out)
    return [results[v] for v in vs]


def train_to_disk(
    params: Params, study: str, paths: Paths, device: str = "cpu", engine: RayEngine | None = None
) -> tuple[int, float]:
    """The train stage: every model of ``study`` trained and written to ``paths.trained(study)``
    (atomically: the old folder stays whole until the new one is complete), and the wall times
    to ``paths.timing("train-<study>")``; both checked writable before training. Returns the
    number of models and the training's seconds. With ``engine`` a Ray cluster trains, and
    ``platform.json`` records the platform its tasks ran on."""
    from initlab.core.io import atomic_path, check_writable, write_json
    from initlab.core.signals import sigterm_raises
    from initlab.training.save import save_results

    for out in (paths.trained(study), paths.timing(f"train-{study}")):
        check_writable(out)
    t0 = time.perf_counter()
    with sigterm_raises():
        results = train_study(params, study, paths, device, engine=engine)
        seconds = time.perf_counter() - t0
        with atomic_path(paths.trained(study)) as out:
            save_results(results, out, engine.platform if engine else None)
        write_json(
            paths.timing(f"train-{study}"),
            {
                "models": len(results),
                "train_seconds": seconds,
                "run_seconds": {r.variant.run_name: r.seconds for r in results},
            },
        )
    return len(results), seconds
