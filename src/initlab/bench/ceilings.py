"""Bench ceilings: the machine's float32 GEMM rate, the FLOPs a step executes, the trainer's
stacks doing only their matrix products, and the ATen operators a step dispatches."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from initlab.params.paths import Paths
from initlab.params.schema import Params
from initlab.params.variants import variants


def gemm_gflops(n: int = 2048, seconds: float = 2.0, device: str = "cpu") -> float:
    """Best float32 ``torch.mm`` rate over ~``seconds`` of n x n products on ``device``, in GFLOP/s."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def executed_flops_per_sample(sizes: list[int]) -> int:
    """FLOPs initlab's step does per sample: forward + weight gradients everywhere, input
    gradients only above the first layer."""
    macs = [i * o for i, o in zip(sizes[:-1], sizes[1:])]
    return 2 * sum(macs) * 2 + 2 * sum(macs[1:])


def step_matmuls(model, batch: int) -> list[tuple[Tensor, Tensor]]:
    """The operands of every matrix product one training step of ``model`` (a ``StackedMLP``)
    runs on a shared batch of ``batch`` rows, in autograd's layouts: each layer's forward product,
    its weight gradient, and, above the first layer, its input gradient."""
    M = model.n_models
    h = torch.randn(M, batch, model.sizes[0])
    pairs = []
    for k, (w, narrow) in enumerate(zip(model.weights, model.narrow)):
        w = w.detach()
        o = w.shape[1] if narrow else w.shape[2]
        g = torch.randn(M, o, batch) if narrow else torch.randn(M, batch, o)
        if narrow:  # out^T = W h^T: dW = g h, dh^T = W^T g
            pairs += [(w, h.transpose(1, 2)), (g, h)] + ([(w.transpose(1, 2), g)] if k else [])
        else:  # out = h W: dW = h^T g, dh = g W^T
            pairs += [(h, w), (h.transpose(1, 2), g)] + ([(g, w.transpose(1, 2))] if k else [])
        h = torch.randn(M, batch, o)
    return pairs


def matmul_ceiling(params: Params, paths: Paths, seed: int = 0, steps: int = 100) -> dict:
    """What bounds (b): its group's stacks, in the trainer's threads, doing only the step's matrix
    products, and separately only the fused Adam update, for ``steps`` steps; scaled to the
    group's steps, per model. (b) can get no closer to the GEMM rate than its products alone do."""
    from initlab.nets.models import StackedMLP
    from initlab.nets.optim import make_optimizer
    from initlab.training.stacks import run_stacks, stacks_for
    from initlab.training.study import load_study_data

    st = params.study("fashion_mnist").train
    group = [v for v in variants(params, "fashion_mnist") if v.seed == seed]
    data = load_study_data("fashion_mnist", "none", paths, "cpu", all_data=False)
    stacks = stacks_for(st, group, data, 10, "cpu")
    sizes = [784, *st.model.hidden, 10]

    def products(s, stop) -> float:
        pairs = step_matmuls(StackedMLP(len(s.group), sizes), st.batch_size)
        t0 = time.perf_counter()
        for _ in range(steps):
            for a, b in pairs:
                torch.bmm(a, b)
        return time.perf_counter() - t0

    def adam(s, stop) -> float:
        ps = list(StackedMLP(len(s.group), sizes).parameters())
        for p in ps:
            p.grad = torch.randn_like(p)
        opt = make_optimizer("adam", ps, torch.tensor([v.lr for v in s.group]))  # the trainer's Adam
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        return time.perf_counter() - t0

    scale = stacks[0].steps / steps / len(group)  # seconds of `steps` steps -> seconds per model
    out = {}
    for name, fn in (("matmuls", products), ("adam", adam)):
        t0 = time.perf_counter()
        run_stacks(stacks, fn)
        out[f"{name}_seconds_per_model"] = (time.perf_counter() - t0) * scale
    return {**out, "stacks": [len(s.group) for s in stacks], "steps_timed": steps}


def count_ops(fn) -> int:
    """ATen operators ``fn()`` dispatches (below autograd: forward, backward and optimiser)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n
