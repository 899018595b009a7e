"""Scheduling: each group as one or more stacks of models, run in turn or in a pool of threads,
with bits that do not depend on the machine's core count; and the allocator setting they need."""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

import torch
from torch import Tensor

from initlab.params.schema import StudyTrain
from initlab.params.variants import Variant
from initlab.training.loop import Stopped, architecture

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
