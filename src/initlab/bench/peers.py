"""What a PyTorch user would write instead of initlab's stacked trainer, for ``initlab bench``.

(b) ``plain_loop``: one model at a time, as any tutorial trains it: an ``nn.Sequential``, the data
    in memory, ``torch.randperm`` batches, ``torch.optim.Adam`` (or ``SGD``), torch's own loss.
(c) ``func_ensemble``: PyTorch's own recipe for training many models of one shape at once
    (the "Model ensembling" tutorial): ``torch.func.stack_module_state`` + ``functional_call`` under
    ``torch.vmap`` (dropout masks drawn per model: ``randomness="different"``), one
    ``torch.optim`` optimiser over the stacked parameters.

Both run the same number of steps on the same batches as initlab's group, so per-model seconds
compare directly. Scaling (``scaling``): initlab's per-model time and peak memory as the stack, the
width and the depth grow, each configuration in a fresh process (its peak RSS is its own).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACT = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def mlp(sizes: list[int], activation: str, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(i, o))
        if k < len(sizes) - 2:
            layers.append(ACT[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _loss(out: Tensor, y: Tensor, loss: str) -> Tensor:
    """Mean loss of ``out`` (..., B, C) against labels ``y`` (B,), summed over leading model axes."""
    models = out[..., 0, 0].numel()
    if loss == "cross_entropy":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.repeat(models)) * models
    t = y.float().unsqueeze(-1).expand_as(out)
    if loss == "bce_logits":
        return F.binary_cross_entropy_with_logits(out, t) * models
    return F.binary_cross_entropy(torch.sigmoid(out), t) * models


def _optimizer(name: str, params, lr: float):
    return torch.optim.SGD(params, lr=lr) if name == "sgd" else torch.optim.Adam(params, lr=lr)


def _batches(n: int, batch: int | None, epochs: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    bs = batch or n
    for _ in range(epochs):
        order = torch.randperm(n, generator=g) if bs < n else torch.arange(n)
        for start in range(0, n, bs):
            yield order[start : start + bs]


def plain_loop(
    x: Tensor,
    y: Tensor,
    sizes: list[int],
    activation: str,
    dropout: float,
    loss: str,
    optimizer: str,
    lr: float,
    batch: int | None,
    epochs: int,
    seed: int = 0,
) -> dict:
    """(b): one model, trained alone; wall seconds."""
    torch.manual_seed(seed)
    model = mlp(sizes, activation, dropout).to(x.device).train()
    opt = _optimizer(optimizer, model.parameters(), lr)
    t0 = time.perf_counter()
    steps = 0
    for idx in _batches(len(x), batch, epochs, seed):
        out = model(x[idx])
        opt.zero_grad()
        value = _loss(out, y[idx], loss)
        value.backward()
        opt.step()
        steps += 1
    return {"seconds_per_model": time.perf_counter() - t0, "steps": steps, "last_loss": value.item()}


def func_ensemble(
    x: Tensor,
    y: Tensor,
    n_models: int,
    sizes: list[int],
    activation: str,
    dropout: float,
    loss: str,
    optimizer: str,
    lr: float,
    batch: int | None,
    epochs: int,
    seed: int = 0,
) -> dict:
    """(c): ``n_models`` models stacked by ``torch.func`` and trained under ``vmap``; wall seconds
    per model."""
    from torch.func import functional_call, stack_module_state

    torch.manual_seed(seed)
    models = [mlp(sizes, activation, dropout).to(x.device).train() for _ in range(n_models)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def one(p, b, xb):
        return functional_call(base, (p, b), (xb,))

    ensemble = torch.vmap(one, in_dims=(0, 0, None), randomness="different")
    opt = _optimizer(optimizer, params.values(), lr)
    t0 = time.perf_counter()
    steps = 0
    for idx in _batches(len(x), batch, epochs, seed):
        out = ensemble(params, buffers, x[idx])
        opt.zero_grad()
        value = _loss(out, y[idx], loss)
        value.backward()
        opt.step()
        steps += 1
    return {
        "seconds_per_model": (time.perf_counter() - t0) / n_models,
        "models": n_models,
        "steps": steps,
        "last_loss": value.item() / n_models,
    }


# --------------------------------------------------------------------------- scaling

SCALING_STEPS = 40  # optimiser steps of batch 100 per configuration


def scaling_point(models: int, width: int, depth: int, steps: int = SCALING_STEPS) -> dict:
    """initlab's per-model seconds per step and peak memory per model for ``models`` stacked MLPs
    784 -> ``depth`` hidden layers of ``width`` (ReLU, dropout 0.2) -> 10, Adam, batch 100, on
    random data. Memory: the process's peak RSS during training above its RSS before (the data
    and one warm-up run already in), per model. Run in a fresh process (``scaling``)."""
    from initlab.params.schema import StudyTrain
    from initlab.params.variants import Variant
    from initlab.training.loop import train_group
    from initlab.training.stacks import keep_freed_memory

    keep_freed_memory()
    g = torch.Generator().manual_seed(0)
    n = 100 * steps
    data = {"x_train": torch.rand(n, 784, generator=g), "y_train": torch.randint(0, 10, (n,), generator=g)}
    data.update(x_val=data["x_train"][:100], y_val=data["y_train"][:100])
    st = StudyTrain(
        model={"hidden": [width] * depth, "activation": "relu", "dropout": 0.2},
        optimizer="adam",
        lr=[1e-3],
        batch_size=100,
        epochs=1,
        seeds=[0],
        inits=["kaiming"],
        losses=["cross_entropy"],
        eval_train=False,
        diagnostics={"at_steps": []},
    )
    from initlab.params.schema import InitSpec

    inits = {"kaiming": InitSpec(name="kaiming_uniform", args={"mode": "fan_in", "nonlinearity": "relu"})}
    group = [Variant("scaling", "kaiming", "cross_entropy", "none", 1e-3, 0) for _ in range(models)]
    warm = {k: v[:500] for k, v in data.items()}  # first calls (thread pools, kernels) outside the timing
    train_group(st, group[:1], inits, warm, 10)
    base = _reset_peak_rss()
    t0 = time.perf_counter()
    train_group(st, group, inits, data, 10)
    seconds = time.perf_counter() - t0
    peak = _peak_rss_kib() - base
    return {
        "models": models,
        "width": width,
        "depth": depth,
        "steps": steps,
        "ms_per_model_step": 1000 * seconds / steps / models,
        "peak_mib_per_model": peak / 1024 / models,
    }


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> int:
    """Reset this process's peak RSS to its current RSS (Linux: ``clear_refs`` 5); returns it, KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def _peak_rss_kib() -> int:
    return _status_kib("VmHWM")


SCALING_GRID = [(m, 256, 3) for m in (1, 2, 4, 8, 16, 32, 64)] + [(16, 1024, 3)] + [(16, 256, d) for d in (10, 30)]


def scaling(progress=print, grid=SCALING_GRID) -> list[dict]:
    """``scaling_point`` of each (models, width, depth) of ``grid``, each in a fresh process on one
    intra-op thread (as a stack runs in ``dvc repro``)."""
    rows = []
    for m, w, d in grid:
        progress(f"scaling: {m} models, width {w}, depth {d} ...")
        code = (
            "import json, torch; torch.set_num_threads(1); from initlab.bench.peers import scaling_point; "
            f"print(json.dumps(scaling_point({m}, {w}, {d})))"
        )
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"scaling point ({m}, {w}, {d}) failed:\n{p.stderr[-2000:]}")
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return rows
