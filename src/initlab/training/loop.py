"""Training: every variant of a study, grouped so that models reading the same batches train
together in one ``StackedMLP``; each model's result equals training it alone.

A group is the set of variants that read the same batches in the same order (the seed, when
batches are shuffled). Inside it models differ by initialiser, loss, learning rate and seed, and
on small data by input normalisation (``group_key``); BatchNorm models keep their own group.
"""

from __future__ import annotations

import ctypes
import json
import threading
import time
from collections import defaultdict
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from initlab.errors import ParamsError
from initlab.nets.diagnostics import Probe
from initlab.nets.heads import head_for, n_outputs, predictions, targets
from initlab.nets.models import DropoutStreams, StackedMLP, apply_head
from initlab.nets.optim import make_optimizer
from initlab.nets.registry import DATA_DEPENDENT, LOSSES
from initlab.params.paths import Paths
from initlab.params.schema import InitSpec, ModelSpec, Params, StudyTrain
from initlab.params.variants import Variant, variants

CURVE_BYTES = 1 << 30  # at most this much of float32 loss curves (steps x models) per study


def architecture(spec: ModelSpec, n_in: int, n_classes: int, loss: str, normalize: str) -> dict:
    """Everything needed to rebuild a model: the arguments of ``StackedMLP`` / ``build_module``."""
    return {
        "sizes": [n_in, *spec.hidden, n_outputs(n_classes)],
        "activation": spec.activation,
        "dropout": spec.dropout,
        "batchnorm_input": normalize == "batchnorm",
        "head": head_for(loss, n_classes),
    }


@dataclass
class Result:
    """What training one model produced."""

    variant: Variant
    module: torch.nn.Module
    arch: dict
    step_loss: np.ndarray  # training loss per optimiser step, up to divergence
    val_loss: np.ndarray  # per epoch
    val_acc: np.ndarray  # per epoch
    final: dict = field(default_factory=dict)
    seconds: float = float("nan")  # this model's share of its stack's wall time (not hashed)
    diagnostics: list[dict] = field(default_factory=list)  # initlab.nets.diagnostics.Probe.rows


class GroupLoss:
    """Each model's loss in a group whose models may differ in loss (and so in head).

    The stack outputs logits; models of one loss are gathered, given their head (sigmoid,
    softmax or none) and their targets, and their per-model losses put back in model order.
    With one loss in the group this is a single call on the whole stack.
    """

    def __init__(self, names: list[str], n_classes: int, device) -> None:
        self.n_classes = n_classes
        self.parts = []
        for name in dict.fromkeys(names):
            idx = torch.tensor([m for m, n in enumerate(names) if n == name], device=device)
            self.parts.append((LOSSES[name], head_for(name, n_classes), idx))
        self.single = len(self.parts) == 1
        order = torch.cat([idx for _, _, idx in self.parts])
        self.inverse = torch.empty_like(order)
        self.inverse[order] = torch.arange(len(order), device=device)

    def targets(self, y: Tensor) -> list[Tensor]:
        """Labels in each part's form, computed once per split."""
        return [targets(y, loss, self.n_classes) for loss, _, _ in self.parts]

    def __call__(self, out: Tensor, ts: list[Tensor], y: Tensor | None = None):
        """Per-model losses ``(M,)``; with ``y``, also per-model accuracies."""
        losses, accs = [], []
        for (loss, head, idx), t in zip(self.parts, ts):
            o = apply_head(out if self.single else out.index_select(0, idx), head)
            tt = t.expand(o.shape[0], *t.shape) if loss.class_targets else t.expand_as(o)
            losses.append(loss.fn(o, tt))
            if y is not None:
                accs.append((predictions(o, head) == y.unsqueeze(0)).float().mean(dim=1))
        if self.single:
            return (losses[0], accs[0]) if y is not None else losses[0]
        cat = torch.cat(losses)[self.inverse]
        return (cat, torch.cat(accs)[self.inverse]) if y is not None else cat


def keep_freed_memory() -> None:
    """Let glibc keep freed blocks of up to 32 MiB for reuse instead of unmapping them.

    Every step autograd frees and reallocates the same 1-11 MiB activations and gradients. By
    default glibc returns blocks that size to the OS and the next step faults their pages in
    again. Threads allocate from the main arena too: a thread's own arena grows in 64 MiB heaps
    and unmaps a heap whenever it empties, whatever the trim threshold (the measured page faults
    are in the README, "How it trains"). No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


class Stopped(Exception):
    """A stack's training was stopped because another failed or the process was interrupted."""


def _evaluate(
    model: StackedMLP,
    x: Tensor,
    y: Tensor,
    group_loss: GroupLoss,
    rows: int = 2048,
    dropout: DropoutStreams | None = None,
):
    """Per-model losses and accuracies on ``x``, in row chunks: a 12,000-image split of 14 models
    is 172 MB of first-layer activations at once, 24 MB per 2,048 rows.

    In eval mode, unless ``dropout`` is given: then in training mode with dropout on, drawing
    masks from ``dropout``, as seed 001 validates (it never calls ``model.eval()``)."""
    model.train(dropout is not None)
    with torch.no_grad():
        out = torch.cat([model(x[..., i : i + rows, :], dropout) for i in range(0, x.shape[-2], rows)], 1)
        losses, acc = group_loss(out, group_loss.targets(y), y)
    model.train()
    return losses, acc


def train_group(
    st: StudyTrain,
    group: list[Variant],
    inits: dict[str, InitSpec],
    data: dict[str, Tensor],
    n_classes: int,
    device: str = "cpu",
    progress: tqdm | None = None,
    stop: threading.Event | None = None,
) -> list[Result]:
    """Train the models of one group together; return one ``Result`` per variant, in order.

    ``stop``, when set by another thread, ends training at the next step with ``Stopped``.
    """
    v0 = group[0]
    x, y = data["x_train"], data["y_train"]
    n = x.shape[-2]  # x: (n, in) shared by every model, or (M, n, in), one input per model
    M = len(group)
    # The stack gives logits; each model's head (by its loss) is applied in GroupLoss.
    spec = st.spec(v0.model)
    arch = {**architecture(spec, x.shape[-1], n_classes, v0.loss, v0.normalize), "head": "none"}
    model = StackedMLP(M, **arch).to(device)
    group_loss = GroupLoss([v.loss for v in group], n_classes, device)
    # Each model draws its initial weights from its own generator, seeded by its seed; its
    # dropout masks come from its seed's dropout stream, drawn once for the models sharing it.
    gens = [torch.Generator(device).manual_seed(v.seed) for v in group]
    specs = [inits[v.init] for v in group]
    model.initialise(specs, gens)
    # The probe batch: the training split's first rows (diagnostics, and LSUV's batch).
    p_rows = min(st.diagnostics.probe_rows, n)
    x_probe, ts_probe = x[..., :p_rows, :], group_loss.targets(y[:p_rows])
    data_dependent = [m for m, sp in enumerate(specs) if sp.name in DATA_DEPENDENT]
    if data_dependent:  # LSUV: rescale each layer to unit output std on the probe batch
        model.lsuv(
            x_probe,
            data_dependent,
            [specs[m].args.get("tol", 0.1) for m in data_dependent],
            [specs[m].args.get("max_rounds", 10) for m in data_dependent],
        )
    masks = DropoutStreams([v.seed for v in group], device) if spec.dropout > 0 else None
    lr = torch.tensor([v.lr for v in group], dtype=torch.float32, device=device)
    opt = make_optimizer(st.optimizer, list(model.parameters()), lr)
    bs = st.batch_size or n
    order_gen = torch.Generator().manual_seed(v0.seed)
    steps_per_epoch = (n + bs - 1) // bs
    y_all = group_loss.targets(y)
    step_loss = torch.full((st.epochs * steps_per_epoch, M), float("nan"))
    val_loss = torch.full((st.epochs, M), float("nan"))
    val_acc = torch.full((st.epochs, M), float("nan"))
    diverged_at = torch.full((M,), -1, dtype=torch.long)
    alive = torch.ones(M, dtype=torch.bool)
    # Long full-batch runs (10,000 epochs) are validated at a stride: ~1,000 points per curve.
    val_every = st.val_every or max(1, st.epochs // 1000)
    seed_protocol = v0.reproduce and st.reproduce is not None and st.reproduce.validate_with_dropout
    val_masks = masks if seed_protocol else None  # seed 001 validates with dropout on
    step = 0
    probe = Probe(model, x_probe, ts_probe, group_loss, st.diagnostics.at_steps, st.epochs * steps_per_epoch)
    model.train()
    for epoch in range(st.epochs):
        order = torch.randperm(n, generator=order_gen) if st.shuffle and bs < n else None
        for start in range(0, n, bs):
            if stop is not None and stop.is_set():
                raise Stopped
            if order is None:
                xb, tb = x[..., start : start + bs, :], [t[start : start + bs] for t in y_all]
            else:
                idx = order[start : start + bs].to(device)
                xb, tb = x[..., idx, :], [t[idx] for t in y_all]
            diagnose = probe.wants(step)
            if diagnose:
                probe.before(step)
            losses = group_loss(model(xb, masks), tb)
            opt.zero_grad()
            losses.sum().backward()
            opt.step()
            if diagnose:
                probe.after(step)
            step_loss[step] = losses.detach()
            step += 1
        finite = torch.isfinite(step_loss[step - steps_per_epoch : step])
        bad = alive & ~finite.all(dim=0)
        if bad.any():  # a diverged model stops at its first non-finite loss; the others go on
            first = (~finite).float().argmax(dim=0) + step - steps_per_epoch
            diverged_at[bad] = first[bad]
            alive &= ~bad
        if (epoch + 1) % val_every == 0 or epoch == st.epochs - 1:
            vl, va = _evaluate(model, data["x_val"], data["y_val"], group_loss, dropout=val_masks)
            val_loss[epoch], val_acc[epoch] = vl.cpu(), va.cpu()
        if progress is not None:
            progress.update(M)
        if not alive.any():
            break
    probe.end(step)
    if st.eval_train:
        tl, ta = _evaluate(model, x, y, group_loss)
    else:
        tl = ta = torch.full((M,), float("nan"))
    model = model.cpu()
    results = []
    for m, v in enumerate(group):
        last = diverged_at[m].item() if diverged_at[m] >= 0 else step
        sl = step_loss[:last, m].numpy()
        last_epoch = sl[-steps_per_epoch:] if len(sl) else np.array([np.nan])
        diverged = bool(diverged_at[m] >= 0)
        final = {
            "diverged": int(diverged),
            "diverged_step": int(diverged_at[m]),
            "steps": int(last),
            # seed 001 reports the mean batch loss of the last epoch; full batch: the last step.
            "train_loss": float("nan") if diverged else float(last_epoch.mean()),
            "train_loss_last_step": float("nan") if diverged else float(sl[-1]),
            "train_accuracy": float("nan") if diverged else float(ta[m]),
            "train_loss_eval": float("nan") if diverged else float(tl[m]),
            "val_loss": float("nan") if diverged else float(val_loss[epoch, m]),
            "val_accuracy": float("nan") if diverged else float(val_acc[epoch, m]),
        }
        arch_m = architecture(spec, x.shape[-1], n_classes, v.loss, v.normalize)
        results.append(
            Result(
                v,
                model.to_module(m, arch_m["head"]),
                arch_m,
                sl,
                val_loss[:, m].numpy(),
                val_acc[:, m].numpy(),
                final,
                diagnostics=probe.rows(m),
            )
        )
    return results


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
    from initlab.data.datasets import load_split

    data = {}
    for split in ("train", "val"):
        data[f"x_{split}"], data[f"y_{split}"] = load_split(study, split, normalize, paths, device)
    if all_data:  # the seed's own run: every point for training (and so no held-out test)
        x_test, y_test = load_split(study, "test", normalize, paths, device)
        data["x_train"] = torch.cat([data["x_train"], data["x_val"], x_test])
        data["y_train"] = torch.cat([data["y_train"], data["y_val"], y_test])
    return data


def train_study(
    params: Params, study: str, paths: Paths, device: str = "cpu", show_progress: bool | None = None
) -> list[Result]:
    """Train every variant of ``study``; returns results in ``variants()`` order."""
    from initlab.core.io import read_json
    from initlab.data.datasets import shuffled_split

    sp = params.study(study)
    st: StudyTrain = sp.train
    summary = read_json(paths.prepared(study).with_suffix(".json"), study=study)
    n_classes = summary["n_classes"]
    n_train = summary["sizes"]["train"]
    vs = variants(params, study)
    check_fits_data(study, st, vs, n_classes, n_train)
    cache: dict[tuple, dict] = {("none", False): load_study_data(study, "none", paths, device, False)}
    input_bytes = 4 * cache["none", False]["x_train"].numel() * len(vs)
    groups: dict[tuple, list[Variant]] = defaultdict(list)
    for v in sorted(vs, key=lambda v: v.lr):  # equal learning rates adjacent: one optimiser block
        groups[group_key(v, st, n_train, input_bytes)].append(v)
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
                by_norm[norm] = shuffled_split(study, norm, paths, v0.seed, sp.split.val_fraction, device)
                continue
            dkey = (norm, all_data)
            if dkey not in cache:
                cache[dkey] = load_study_data(study, norm, paths, device, all_data)
            by_norm[norm] = cache[dkey]
        stacks += stacks_for(st, group, group_data(group, by_norm), n_classes, device)
    results: dict[Variant, Result] = {}
    disable = None if show_progress is None else not show_progress  # None: only on a terminal
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


SPLIT_STEP_FLOPS = 5e8  # a group this heavy per step is split in SPLIT_PARTS stacks
SPLIT_PARTS = 2  # fixed, so that results do not depend on the machine's cores
MIN_SPLIT = 7  # models per split stack at least: fewer make the GEMMs too thin
STEP_SECONDS = 1.5e-3  # one step's op dispatch on one thread (for ordering stacks only)
THREAD_FLOPS = 8e10  # one core's FLOP/s on a training step (for ordering stacks only)


@dataclass
class Stack:
    """Models trained together in one ``StackedMLP``, and the estimate used to schedule them."""

    group: list[Variant]
    data: dict[str, Tensor]
    flops_per_step: float
    steps: int

    @property
    def cost(self) -> float:
        return self.steps * (STEP_SECONDS + self.flops_per_step / THREAD_FLOPS)


def stacks_for(
    st: StudyTrain, group: list[Variant], data: dict[str, Tensor], n_classes: int, device: str = "cpu"
) -> list[Stack]:
    """The stacks one group trains as: itself, or on CPU a heavy group split in ``SPLIT_PARTS``.

    The split is a constant, not the machine's thread count: a stack's shape decides which kernel
    code path each element takes (a vector body or a scalar tail), so a split that followed the
    cores gave other bits on a machine with another core count."""
    v0 = group[0]
    n = data["x_train"].shape[-2]
    sizes = architecture(st.spec(v0.model), data["x_train"].shape[-1], n_classes, v0.loss, v0.normalize)["sizes"]
    flops = 6 * sum(i * o for i, o in zip(sizes[:-1], sizes[1:])) * min(st.batch_size or n, n)
    steps = st.epochs * -(-n // (st.batch_size or n))
    parts = SPLIT_PARTS if device == "cpu" else 1
    stacks, start = [], 0
    for chunk in split_group(group, flops, parts):  # contiguous parts, in order
        part = chunk_data(data, start, start + len(chunk), len(group))
        stacks.append(Stack(chunk, part, flops * len(chunk), steps))
        start += len(chunk)
    return stacks


def split_group(group: list[Variant], flops_per_model_step: float, workers: int) -> list[list[Variant]]:
    """A heavy group in up to ``workers`` contiguous parts (learning-rate blocks stay whole where
    they can); a light one whole: its steps cost op dispatch, which splitting would multiply."""
    parts = min(workers, len(group) // MIN_SPLIT)
    if parts < 2 or flops_per_model_step * len(group) < SPLIT_STEP_FLOPS:
        return [group]
    bounds = [round(i * len(group) / parts) for i in range(parts + 1)]
    return [group[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def chunk_data(data: dict[str, Tensor], a: int, b: int, m_group: int) -> dict[str, Tensor]:
    """The inputs of models ``a:b`` of a group: shared inputs as they are, per-model ones sliced."""
    if b - a == m_group:
        return data
    out = dict(data)
    for key in ("x_train", "x_val"):
        if out[key].dim() == 3:
            out[key] = out[key][a:b]
    return out


def run_stacks(stacks: list[Stack], train_stack, device: str = "cpu") -> list:
    """``train_stack(stack, stop)`` for every stack; returns their results in order.

    On CPU every stack runs on one intra-op thread, whatever the machine has: ATen's parallel
    reductions keep one partial sum per thread, so a stack's bits would follow the core count.
    Heavy stacks run in a pool of up to W threads (W = torch's intra-op threads), longest first:
    one core per stack does more than two cores on each stack in turn, because a thin GEMM (batch
    100) splits badly over cores and serial work of one stack overlaps another's arithmetic. Ops
    release the GIL; each stack keeps its own generators, so results do not depend on the schedule.
    Light stacks (< ``SMALL_STEP_FLOPS`` per step) run in turn: their steps are op dispatch, and
    two threads would trade the GIL at every op. A failure or Ctrl-C stops every stack at its next
    step. On CUDA all run in turn.
    """
    before = torch.get_num_threads()
    heavy = [i for i, s in enumerate(stacks) if s.flops_per_step >= SMALL_STEP_FLOPS]
    workers = min(before, len(heavy)) if device == "cpu" else 1
    pooled = heavy if workers > 1 else []
    out: list = [None] * len(stacks)
    torch.set_num_threads(1 if device == "cpu" else before)
    try:
        for i, s in enumerate(stacks):
            if i not in pooled:
                out[i] = train_stack(s, None)
        if not pooled:
            return out
        stop = threading.Event()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="initlab-train")
        try:
            futures = {
                i: pool.submit(train_stack, stacks[i], stop) for i in sorted(pooled, key=lambda i: -stacks[i].cost)
            }
            wait(futures.values(), return_when=FIRST_EXCEPTION)
            for f in futures.values():
                if f.done() and f.exception() is not None and not isinstance(f.exception(), Stopped):
                    raise f.exception()
            for i, f in futures.items():
                out[i] = f.result()
            return out
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        torch.set_num_threads(before)


SMALL_STEP_FLOPS = 5e7  # below this a step is op dispatch, not arithmetic


def save_results(results: list[Result], out: Path) -> None:
    """Weights (one state_dict per run), curves and a runs table, into the folder ``out``."""
    import pandas as pd

    (out / "weights").mkdir(parents=True)
    rows, curves, diagnostics = [], {}, []
    for r in results:
        v = r.variant
        torch.save(r.module.state_dict(), out / "weights" / f"{v.run_name}.pt")
        curves[f"{v.run_name}/step_loss"] = r.step_loss.astype(np.float32)
        curves[f"{v.run_name}/val_loss"] = r.val_loss.astype(np.float32)
        curves[f"{v.run_name}/val_acc"] = r.val_acc.astype(np.float32)
        rows.append(
            {
                "run_name": v.run_name,
                "variant": v.name,
                "init": v.init,
                "loss": v.loss,
                "normalize": v.normalize,
                "lr": v.lr,
                "seed": v.seed,
                "reproduce": v.reproduce,
                **({"model": v.model} if v.model else {}),
                **r.final,
                "arch": json.dumps(r.arch),
            }
        )
        diagnostics += [{"run_name": v.run_name, **d} for d in r.diagnostics]
    from initlab.core.io import write_json
    from initlab.core.machine import platform_key

    write_json(out / "platform.json", platform_key())  # what decided these bits
    np.savez(out / "curves.npz", **curves)
    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    pd.DataFrame(diagnostics).to_csv(out / "diagnostics.csv", index=False, float_format="%.6g")
