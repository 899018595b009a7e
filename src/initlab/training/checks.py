"""Checks before training: the device, and what the prepared data and the machine's memory allow
of the training params, refused with a ``ParamsError`` naming the key before anything is allocated."""

from __future__ import annotations

import torch

from initlab.errors import ParamsError
from initlab.nets.registry import LOSSES
from initlab.params.schema import StudyTrain
from initlab.params.variants import Variant
from initlab.training.loop import architecture

CURVE_BYTES = 1 << 30  # at most this much of float32 loss curves (steps x models) per study


def check_device(dev: str, where: str) -> str:
    """``dev`` if this machine has it; ``where`` names its source in the error (flag or params)."""
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ParamsError(f"{where} {dev}: no CUDA device here; allowed: cpu")
    if not (dev == "cpu" or dev.startswith("cuda")):
        raise ParamsError(f"{where} {dev!r}; allowed: cpu, cuda, cuda:N")
    return dev


def check_fits_data(study: str, st: StudyTrain, vs: list[Variant], n_classes: int, n_train: int) -> None:
    """What the prepared data implies for the training params: a ``ParamsError`` naming the key,
    before anything is trained (the schema cannot know the data)."""
    where = f"studies.{study}.train"
    if st.batch_size and st.batch_size > n_train:
        raise ParamsError(
            f"{where}.batch_size = {st.batch_size} is more than the training "
            f"split's {n_train} rows; allowed: up to {n_train}, or null for full batch"
        )
    steps = st.epochs * -(-n_train // (st.batch_size or n_train))
    if steps * len(vs) * 4 > CURVE_BYTES:  # the per-step loss curves are kept in memory
        raise ParamsError(
            f"{where}.epochs = {st.epochs}: {steps:,} steps of {len(vs)} models; "
            f"allowed here: at most {CURVE_BYTES // (4 * len(vs) * (steps // st.epochs)):,} "
            "epochs (their loss curves would not fit in 1 GiB)"
        )
    for v in vs:  # each loss against the number of classes (the registry says which it takes)
        loss = LOSSES[v.loss]
        if not loss.min_classes <= n_classes <= (loss.max_classes or n_classes):
            fits = [
                name for name, x in LOSSES.items() if x.min_classes <= n_classes <= (x.max_classes or n_classes)
            ]
            key = f"{where}.reproduce.losses" if v.reproduce else f"{where}.losses"
            raise ParamsError(
                f"{key}: {v.loss} is for {loss.classes_allowed()}, and {study}'s data has "
                f"{n_classes}; allowed here: {', '.join(fits)}"
            )


def available_memory(device: str) -> int:
    """Bytes the OS (or the GPU) can give now without swapping."""
    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits_memory(
    study: str, st: StudyTrain, groups: list[list[Variant]], n_in: int, n_classes: int, device: str
) -> None:
    """Refuse, before any model is allocated, a study whose largest stack of models cannot fit:
    its weights, gradients and optimiser state alone (float32), a lower bound of what it needs."""
    tensors = 4 if st.optimizer == "adam" else 2  # weights, gradients (+ Adam's two moments)
    worst = None
    for group in groups:
        v0 = group[0]
        sizes = architecture(st.spec(v0.model), n_in, n_classes, v0.loss, v0.normalize)["sizes"]
        per_model = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
        need = 4 * tensors * per_model * len(group)
        if worst is None or need > worst[0]:
            worst = (need, per_model, len(group), v0.model)
    if worst is None:
        return
    need, per_model, models, label = worst
    free = available_memory(device)
    if need > free:
        key = f"studies.{study}.train.{f'models.{label}' if label else 'model'}.hidden"
        h = st.spec(label).hidden
        shown = f"[{h[0]}] * {len(h)}" if len(h) > 3 and len(set(h)) == 1 else str(h)
        raise ParamsError(
            f"{key} = {shown}: {models} models of {per_model:,} parameters train together and "
            f"need at least {need:,} bytes (weights, gradients, {st.optimizer} state in float32); "
            f"{device} has {free:,} bytes available; allowed: a smaller model, fewer "
            "variants, or a machine with more memory"
        )
