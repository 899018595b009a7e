"""Bench (a) and (b): seed 001's own training loop for one model, and initlab's trainer (and
its peers) on the same setup, seconds per model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from initlab.bench import peers
from initlab.bench.ceilings import count_ops
from initlab.errors import ParamsError
from initlab.params.paths import Paths
from initlab.params.schema import Params
from initlab.params.variants import variants

SEED_TRAIN_IMAGES = 48_000  # seed 001: 80 % of the official 60,000


class SeedNet(nn.Module):
    """Seed 001's ``Net``, verbatim: 784-256-128-10, ReLU, dropout 0.2."""

    def __init__(self, hidden_1: int = 256, hidden_2: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, hidden_1)
        self.fc2 = nn.Linear(hidden_1, hidden_2)
        self.fc3 = nn.Linear(hidden_2, 10)
        self.dropout = nn.Dropout(0.2)

    def forward(self, x):
        x = x.view(-1, 28 * 28)
        x = self.dropout(torch.relu(self.fc1(x)))
        x = self.dropout(torch.relu(self.fc2(x)))
        return self.fc3(x)


def seed_loop(raw_root: Path, epochs: int = 2, seed: int = 0, device: str = "cpu") -> dict:
    """Seed 001's ``_get_loss_acc`` for one model; returns seconds and validation accuracy. On a
    GPU, the model lives there and each batch is moved there, as a PyTorch user would."""
    from torch.utils.data import DataLoader, SubsetRandomSampler
    from torchvision import datasets, transforms

    torch.manual_seed(seed)
    np.random.seed(seed)
    train_data = datasets.FashionMNIST(
        root=str(raw_root), train=True, download=False, transform=transforms.ToTensor()
    )
    indices = list(range(len(train_data)))
    np.random.shuffle(indices)
    split = int(np.floor(0.2 * len(train_data)))
    train_idx, valid_idx = indices[split:], indices[:split]
    train_loader = DataLoader(train_data, batch_size=100, sampler=SubsetRandomSampler(train_idx))
    valid_loader = DataLoader(train_data, batch_size=100, sampler=SubsetRandomSampler(valid_idx))
    model = SeedNet().to(device)
    t0 = time.perf_counter()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), 0.001)
    loss_batch = []
    for _ in range(epochs):
        for data, target in train_loader:
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            loss = criterion(model(data), target)
            loss.backward()
            optimizer.step()
            loss_batch.append(loss.item())
    correct = total = 0
    for data, target in valid_loader:
        data, target = data.to(device), target.to(device)
        _, predicted = torch.max(model(data).data, 1)
        total += target.size(0)
        correct += (predicted == target).sum()
    seconds = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "seconds": seconds,
        "val_accuracy": correct.item() / total,
        "steps": len(loss_batch),
        "samples": len(train_idx) * epochs,
        "n_params": n_params,
    }


def initlab_per_model(
    params: Params, paths: Paths, seed: int = 0, device: str = "cpu", diagnostics: bool = True
) -> dict:
    """One group of the Fashion-MNIST study trained as ``dvc repro`` trains it (its stacks, in
    threads on CPU): every model that reads seed ``seed``'s batches (each init x loss); wall
    seconds per model. ``diagnostics=False``: without the per-layer probe, to measure its cost."""
    from initlab.training.loop import train_group
    from initlab.training.stacks import run_stacks, stacks_for
    from initlab.training.study import load_study_data

    make_probe = None if diagnostics else NoProbe
    st = params.study("fashion_mnist").train
    group = sorted((v for v in variants(params, "fashion_mnist") if v.seed == seed), key=lambda v: v.lr)
    data = load_study_data("fashion_mnist", "none", paths, device, all_data=False)
    if len(data["x_train"]) != SEED_TRAIN_IMAGES:
        raise ParamsError(
            f"bench compares with seed 001 on its {SEED_TRAIN_IMAGES:,} training images; "
            f"the prepared split has {len(data['x_train']):,} "
            "(prepare.fashion_mnist.train_subset); allowed: null"
        )
    t0 = time.perf_counter()
    stacks = stacks_for(st, group, data, 10, device)
    inits = params.study("fashion_mnist").inits
    outs = run_stacks(
        stacks, lambda s, stop: train_group(st, s.group, inits, s.data, 10, device, None, stop, make_probe), device
    )
    results = [r for out in outs for r in out]
    seconds = time.perf_counter() - t0
    n_params = sum(p.numel() for p in results[0].module.parameters())
    acc = {r.variant.name: r.final["val_accuracy"] for r in results}
    return {
        "seconds_per_model": seconds / len(group),
        "models": len(group),
        "seconds": seconds,
        "samples": len(data["x_train"]) * st.epochs,
        "n_params": n_params,
        "val_accuracy": acc,
    }


def fashion_mnist_peer_setup(params: Params, paths: Paths, device: str = "cpu") -> dict:
    """The arguments of ``peers.plain_loop`` / ``func_ensemble`` for the Fashion-MNIST group: its
    training split in memory, seed 001's model, loss, optimiser, batch and epochs."""
    from initlab.training.study import load_study_data

    st = params.study("fashion_mnist").train
    data = load_study_data("fashion_mnist", "none", paths, device, all_data=False)
    return {
        "x": data["x_train"],
        "y": data["y_train"],
        "sizes": [784, *st.model.hidden, 10],
        "activation": st.model.activation,
        "dropout": st.model.dropout,
        "loss": "cross_entropy",
        "optimizer": st.optimizer,
        "lr": st.lr[0],
        "batch": st.batch_size,
        "epochs": st.epochs,
    }


TINY_EPOCHS = 2000  # of heart rate's 10,000: per-model time is per step, the same at any length
TINY_MODELS = 20


def tiny_peers(params: Params, paths: Paths, repeats: int) -> dict:
    """Heart rate's 1-4-1 sigmoid MLP, full batch, Adam, BCE, ``TINY_EPOCHS`` steps: initlab with
    ``TINY_MODELS`` models stacked (seeds 0..19 of its first variant, one intra-op thread as
    ``dvc repro`` runs light stacks), against (b) and (c) on the same steps; seconds per model,
    fastest of ``repeats``."""
    from initlab.params.variants import Variant
    from initlab.training.loop import train_group
    from initlab.training.study import load_study_data

    sp = params.study("heart_rate")
    st = sp.train.model_copy(update={"epochs": TINY_EPOCHS, "val_every": TINY_EPOCHS})
    data = load_study_data("heart_rate", "none", paths, "cpu", all_data=False)
    group = [Variant("heart_rate", st.inits[0], st.losses[0], "none", st.lr[0], s) for s in range(TINY_MODELS)]
    setup = {
        "x": data["x_train"],
        "y": data["y_train"],
        "sizes": [1, *st.model.hidden, 1],
        "activation": st.model.activation,
        "dropout": 0.0,
        "loss": st.losses[0],
        "optimizer": st.optimizer,
        "lr": st.lr[0],
        "batch": None,
        "epochs": TINY_EPOCHS,
    }
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"initlab": [], "plain_loop": [], "func_ensemble": []}
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            train_group(st, group, sp.inits, data, 2)
            times["initlab"].append((time.perf_counter() - t0) / TINY_MODELS)
            times["plain_loop"].append(peers.plain_loop(**setup)["seconds_per_model"])
            times["func_ensemble"].append(peers.func_ensemble(n_models=TINY_MODELS, **setup)["seconds_per_model"])
    finally:
        torch.set_num_threads(before)
    best = {k: min(v) for k, v in times.items()}
    # ops per stack step: the difference of two lengths, so set-up and validation cancel out
    short, long = (st.model_copy(update={"epochs": e, "val_every": e}) for e in (20, 120))
    n_short, n_long = (
        count_ops(lambda s=s: train_group(s, group, sp.inits, data, 2, make_probe=NoProbe)) for s in (short, long)
    )
    ops = (n_long - n_short) / (long.epochs - short.epochs)
    step_s = best["initlab"] * TINY_MODELS / TINY_EPOCHS  # one stack step
    return {
        "ops_per_step": ops,
        "us_per_op": 1e6 * step_s / ops,
        "models": TINY_MODELS,
        "steps": TINY_EPOCHS,
        "seconds_per_model": best,
        "all_seconds": times,
        "vs_plain": best["plain_loop"] / best["initlab"],
        "vs_func": best["func_ensemble"] / best["initlab"],
        "ms_per_step_initlab": 1000 * step_s,
    }


class NoProbe:
    """``initlab.nets.diagnostics.Probe`` doing nothing: the trainer without its per-layer
    diagnostics (``train_group(..., make_probe=NoProbe)``)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def wants(self, step: int) -> bool:
        return False

    def end(self, steps: int) -> None:
        pass

    def rows(self, m: int) -> list:
        return []
