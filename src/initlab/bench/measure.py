"""``initlab bench``: how fast initlab trains, measured against seed 001's own loop, in one run.

Three measurements on the same machine, one after the other:

(a) ``seed_loop``: seed 001's training code for one model, as its notebook runs it: torchvision's
    ``FashionMNIST`` with ``ToTensor``, a ``DataLoader`` of batch 100 over a ``SubsetRandomSampler``,
    ``nn.Linear`` layers, ``torch.optim.Adam(lr=1e-3)``, ``loss.item()`` per batch, two epochs,
    then validation accuracy.
(b) ``initlab``: the trainer on the same setup, as ``dvc repro`` runs it: one group of the
    Fashion-MNIST study (the 28 models that read seed 0's batches, every init with both losses)
    in its stacks, one per core, wall time divided by the number of models.
(c) ``gemm``: float32 ``torch.mm`` of two square matrices, the machine's matrix-multiply rate.

FLOPs of a model are counted as the issue counts them: 6 x parameters per sample (forward 2,
backward 4), about 1.4 MFLOP for 784-256-128-10. initlab skips the gradient of the input, which
nobody needs, so the work it does is less than that count; both are reported.

What bounds each figure, measured in the same run: (b)'s stacks doing only their step's matrix
products (``step_matmuls``: the executed FLOPs, in autograd's layouts), and only their fused Adam,
in the trainer's threads (``matmul_ceiling``); the tiny models' ATen operators per stack step
(``count_ops``), whose dispatch is their whole cost; and the full repro's seconds by kind of stage
(``breakdown``) with the machine's I/O stall meanwhile (Linux PSI).

Optionally (``--pipeline``) it copies the project to a temporary folder and times a full
``dvc repro`` from clean (data read from ``INITLAB_DATA_MIRROR`` or the network) and a no-op one,
and MLflow's share of training time: the ``track`` stage's wall time (``pipeline/timings/track.json``;
the median of the repro's and of ``--repeats`` - 1 more onto new stores) over the train stages'
(``pipeline/timings/train-*.json``).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from initlab.bench import peers
from initlab.errors import ParamsError
from initlab.params.paths import Paths
from initlab.params.schema import Params
from initlab.params.variants import variants

SEED_TRAIN_IMAGES = 48_000  # seed 001: 80 % of the official 60,000


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
    from unittest import mock

    from initlab.training.loop import train_group
    from initlab.training.stacks import run_stacks, stacks_for
    from initlab.training.study import load_study_data

    if not diagnostics:
        with mock.patch("initlab.training.loop.Probe", NoProbe):
            return initlab_per_model(params, paths, seed, device)

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
        stacks, lambda s, stop: train_group(st, s.group, inits, s.data, 10, device, None, stop), device
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
    from unittest import mock

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
    with mock.patch("initlab.training.loop.Probe", NoProbe):
        n_short, n_long = (count_ops(lambda s=s: train_group(s, group, sp.inits, data, 2)) for s in (short, long))
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
    """``initlab.nets.diagnostics.Probe`` doing nothing: the trainer without its per-layer diagnostics."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def wants(self, step: int) -> bool:
        return False

    def end(self, steps: int) -> None:
        pass

    def rows(self, m: int) -> list:
        return []


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


def timed_repro(root: Path, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """``dvc repro`` in ``root``: its wall seconds, and each stage's, from one "Running stage"
    line to the next (the stage's command and DVC's caching of its outputs)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(
        ["dvc", "repro"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    marks, text = [], []
    for line in p.stdout:
        text.append(line)
        if m := re.match(r"Running stage '([^']+)'", line):
            marks.append((m.group(1), time.perf_counter() - t0))
    total = time.perf_counter() - t0
    if p.wait() != 0:
        raise RuntimeError(f"dvc repro failed in {root}:\n{''.join(text)[-3000:]}")
    ends = [t for _, t in marks[1:]] + [total]
    return total, {name: end - start for (name, start), end in zip(marks, ends)}


def breakdown(stages: dict[str, float], train_seconds: float, total: float) -> dict[str, float]:
    """A repro's ``total`` seconds by kind of stage (``train@x`` -> ``train``), the train stages
    split into training (the trainer's own clock) and the rest (start-up, reading data, writing
    weights, DVC caching them), and DVC's start-up before the first stage; largest first."""
    kinds: dict[str, float] = {"dvc start-up": total - sum(stages.values())}
    for name, seconds in stages.items():
        kind = name.split("@")[0]
        kinds[kind] = kinds.get(kind, 0.0) + seconds
    if "train" in kinds:
        kinds["train (outside training)"] = kinds.pop("train") - train_seconds
        kinds["training"] = train_seconds
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def io_stall_seconds() -> float | None:
    """Seconds every task of the machine was stalled on I/O so far (Linux PSI ``full``), or None."""
    try:
        text = Path("/proc/pressure/io").read_text()
    except OSError:
        return None
    m = re.search(r"^full .*total=(\d+)", text, re.M)
    return int(m.group(1)) / 1e6 if m else None


def time_pipeline(project: Path, env: dict[str, str], track_repeats: int = 3, progress=print) -> dict:
    """Full ``dvc repro`` from clean in a copy of ``project``, then a no-op ``dvc repro``; training
    seconds per study, from the full one, and the ``track`` stage's MLflow seconds.

    MLflow's seconds are the median of ``track_repeats`` timings of the same ``initlab track``:
    the full repro's, then ``track_repeats - 1`` more onto new stores (each a new SQLite file,
    as the repro's was). One ``track`` run moves by 10-25 % on this machine, and the share is a
    target of its own; the median, unlike the fastest, does not favour it. Every time is kept.
    """
    with tempfile.TemporaryDirectory(prefix="initlab-bench-") as tmp:
        root = Path(tmp) / "project"
        files = subprocess.run(
            ["git", "ls-files"], cwd=project, capture_output=True, text=True, check=True
        ).stdout.split()
        for f in files:
            if f == "dvc.lock" or f.startswith(("reports/", "pipeline/")):
                continue
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / f, root / f)
        env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
        for cmd in (["git", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
            subprocess.run(cmd, cwd=root, check=True, env=env, capture_output=True)
        stall = io_stall_seconds()
        out = {}
        out["full_repro_seconds"], stages = timed_repro(root, env)
        if stall is not None and (after := io_stall_seconds()) is not None:
            out["io_stall_seconds"] = after - stall
        out["noop_repro_seconds"], _ = timed_repro(root, env)
        out["stage_seconds"] = stages
        train_s = 0.0
        timings = root / "pipeline" / "timings"
        for t in sorted(timings.glob("train-*.json")):
            d = json.loads(t.read_text())
            out[f"train_{t.stem.removeprefix('train-')}"] = {k: d[k] for k in ("models", "train_seconds")}
            train_s += d["train_seconds"]
        tracking = timings / "track.json"
        tracked = json.loads(tracking.read_text())  # the one MLflow stage
        track_s = [tracked["mlflow_seconds"]]
        for i in range(1, track_repeats):
            progress(f"initlab track again, onto a new MLflow store ({i + 1}/{track_repeats}) ...")
            store = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / f'bench-store-{i}' / 'mlflow.db'}"}
            p = subprocess.run(
                [sys.executable, "-m", "initlab", "track"], cwd=root, env=store, capture_output=True, text=True
            )
            if p.returncode != 0:
                raise RuntimeError(f"initlab track failed in {root}:\n{p.stderr[-2000:]}")
            again = json.loads(tracking.read_text())
            if again["logged"] != tracked["logged"]:
                raise RuntimeError(
                    f"initlab track logged {again['logged']} runs onto a new store, "
                    f"{tracked['logged']} in the repro"
                )
            track_s.append(again["mlflow_seconds"])
        mlflow_s = statistics.median(track_s)
        out["breakdown"] = breakdown(stages, train_s, out["full_repro_seconds"])
        out.update(
            train_seconds=train_s,
            mlflow_seconds=mlflow_s,
            mlflow_all_seconds=track_s,
            mlflow_share_of_training=mlflow_s / train_s,
            mlflow_runs={"logged": tracked["logged"], "skipped": tracked["skipped"]},
        )
        return out


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from initlab import kernels
    from initlab.core.machine import fingerprint

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "kernels": kernels(),
        "platform": fingerprint(),
    }


def run_bench(
    params: Params,
    paths: Paths,
    project: Path,
    pipeline: bool,
    device: str = "cpu",
    progress=print,
    repeats: int = 3,
    scaling: bool = False,
) -> dict:
    """All measurements, in one process, one after the other; returns the figures.

    (a) and (b) are each timed ``repeats`` times, alternately, and the fastest of each is kept,
    as ``timeit`` does: on a shared 2-core machine a run is only ever slowed, by as much as 15 %
    here, and taking the minimum of both sides keeps the ratio fair. Every time is in the JSON.
    """
    from initlab.training.stacks import keep_freed_memory

    keep_freed_memory()
    sizes = [784, *params.study("fashion_mnist").train.model.hidden, 10]
    out: dict = {
        "machine": machine(),
        "setup": "seed 001: 784-256-128-10 ReLU, dropout 0.2, "
        "Adam 1e-3, batch 100, 2 epochs, 48,000 training images",
    }
    from initlab.core.machine import cbwr_branches

    progress("MKL's reproducibility branches (MKL_CBWR) on the first layer's bmm ...")
    out["mkl_cbwr"] = {"platform": out["machine"]["platform"], "branches": cbwr_branches()}
    progress("(c) float32 GEMM rate ...")
    gemm_before = gemm_gflops(device=device)
    runs_a, runs_b, runs_b0, runs_plain, runs_func = [], [], [], [], []
    fm = fashion_mnist_peer_setup(params, paths, device)
    for i in range(repeats):  # interleaved, so that a slow spell of the machine hits both
        progress(f"(a) seed 001's loop, one model ({i + 1}/{repeats}) ...")
        runs_a.append(seed_loop(paths.raw("fashion_mnist"), device=device))
        progress(f"(b) initlab's trainer, one group ({i + 1}/{repeats}) ...")
        runs_b.append(initlab_per_model(params, paths, device=device))
        progress(f"(b0) the same without per-layer diagnostics ({i + 1}/{repeats}) ...")
        runs_b0.append(initlab_per_model(params, paths, device=device, diagnostics=False))
        progress(f"(peer) a plain one-model loop ({i + 1}/{repeats}) ...")
        runs_plain.append(peers.plain_loop(**fm))
        progress(f"(peer) torch.func ensembling of {runs_b[-1]['models']} models ({i + 1}/{repeats}) ...")
        runs_func.append(peers.func_ensemble(n_models=runs_b[-1]["models"], **fm))
    a = {**min(runs_a, key=lambda r: r["seconds"]), "all_seconds": [r["seconds"] for r in runs_a]}
    b = {**min(runs_b, key=lambda r: r["seconds"]), "all_seconds": [r["seconds"] for r in runs_b]}
    b0 = {**min(runs_b0, key=lambda r: r["seconds"]), "all_seconds": [r["seconds"] for r in runs_b0]}
    b0.pop("val_accuracy", None)

    def fastest(runs: list[dict]) -> dict:
        return {
            **min(runs, key=lambda r: r["seconds_per_model"]),
            "all_seconds": [r["seconds_per_model"] for r in runs],
        }

    plain, func = fastest(runs_plain), fastest(runs_func)
    progress("tiny models: heart rate's MLP, full batch ...")
    tiny = tiny_peers(params, paths, repeats)
    progress("what bounds (b): its products alone, its Adam alone ...")
    ceiling = [matmul_ceiling(params, paths) for _ in range(repeats)] if device == "cpu" else []
    gemm_after = gemm_gflops(device=device)
    gemm = max(gemm_before, gemm_after)
    nominal = 6 * a["n_params"] * b["samples"] / 1e9  # GFLOP per model, the count
    executed = executed_flops_per_sample(sizes) * b["samples"] / 1e9
    out.update(
        seed_loop=a,
        initlab=b,
        initlab_no_diagnostics=b0,
        plain_loop=plain,
        func_ensemble=func,
        vs_plain=plain["seconds_per_model"] / b["seconds_per_model"],
        vs_func=func["seconds_per_model"] / b["seconds_per_model"],
        tiny=tiny,
        diagnostics_cost=b["seconds"] / b0["seconds"] - 1,
        gemm_gflops={"before": gemm_before, "after": gemm_after, "best": gemm},
        gflop_per_model={"nominal_6N": nominal, "executed": executed},
        speedup=a["seconds"] / b["seconds_per_model"],
        initlab_gflops=nominal / b["seconds_per_model"],
        initlab_gemm_fraction=nominal / b["seconds_per_model"] / gemm,
        initlab_gemm_fraction_executed=executed / b["seconds_per_model"] / gemm,
    )
    if ceiling:
        best = {k: min(c[k] for c in ceiling) for k in ("matmuls_seconds_per_model", "adam_seconds_per_model")}
        out["bound"] = {
            **ceiling[0],
            **best,
            "all": ceiling,
            "matmuls_gemm_fraction_executed": executed / best["matmuls_seconds_per_model"] / gemm,
            "share_of_b": {k.split("_")[0]: v / b["seconds_per_model"] for k, v in best.items()},
        }
    if scaling:
        out["scaling"] = peers.scaling(progress)
    if pipeline:
        progress("full dvc repro from clean in a temporary copy, then a no-op one ...")
        out["pipeline"] = time_pipeline(project, dict(os.environ), repeats, progress)
    return out


def scaling_lines(rows: list[dict]) -> list[str]:
    """The scaling table as markdown (the README's)."""
    out = ["| models | width | hidden layers | ms per model-step | peak MiB per model |", "|---|---|---|---|---|"]
    out += [
        f"| {r['models']} | {r['width']} | {r['depth']} | {r['ms_per_model_step']:.2f} | "
        f"{r['peak_mib_per_model']:.1f} |"
        for r in rows
    ]
    return out


def _of(times: list[float], kept: str = "fastest") -> str:
    """ " (fastest of 3: 16.3, 15.0, 14.7 s)": which of the repeated timings counts, and all of them."""
    return f" ({kept} of {len(times)}: {', '.join(f'{t:.1f}' for t in times)} s)" if len(times) > 1 else ""


def platform_lines(r: dict) -> list[str]:
    """The platform that decides the bits, and what each MKL CNR branch costs on it."""
    from initlab.core.machine import describe

    if "mkl_cbwr" not in r:
        return []
    pf = r["mkl_cbwr"]["platform"]
    lines = [f"platform: {describe(pf)}; MKL runs its '{pf['mkl_code_path']}' path, CNR {pf['mkl_cnr']}"]
    for branch, b in r["mkl_cbwr"]["branches"].items():
        if "gflops" in b:
            bits = "the same bits" if b.get("same_bits_as_unset") else "other bits"
            lines.append(
                f"    MKL_CBWR={branch:<12} {b['gflops']:6.1f} GFLOP/s ({b['ratio']:.2f}x of unset), {bits}"
            )
        else:
            lines.append(f"    MKL_CBWR={branch:<12} failed: {b.get('error')}")
    return lines


def summary_lines(r: dict) -> list[str]:
    lines = [
        f"machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, torch {r['machine']['torch']}",
        *platform_lines(r),
        f"(a) seed 001 loop:        {r['seed_loop']['seconds']:.2f} s per model"
        + _of(r["seed_loop"].get("all_seconds", [])),
        f"(b) initlab trainer:      {r['initlab']['seconds_per_model']:.2f} s per model "
        f"({r['initlab']['models']} models in {r['initlab']['seconds']:.1f} s)"
        + _of(r["initlab"].get("all_seconds", [])),
        f"    speed-up (a)/(b):     {r['speedup']:.1f}x   (target >= 12x)",
        f"(c) float32 GEMM:         {r['gemm_gflops']['best']:.0f} GFLOP/s",
        f"    (b) achieves:         {r['initlab_gflops']:.0f} GFLOP/s = "
        f"{100 * r['initlab_gemm_fraction']:.0f}% of (c)   (target >= 60%; 6N FLOPs per sample; "
        f"{100 * r['initlab_gemm_fraction_executed']:.0f}% counting only the FLOPs executed)",
    ]
    if "initlab_no_diagnostics" in r:
        b0 = r["initlab_no_diagnostics"]
        lines.insert(
            4,
            f"(b0) without diagnostics: {b0['seconds_per_model']:.2f} s per model"
            f"{_of(b0.get('all_seconds', []))}"
            f"; per-layer diagnostics cost {100 * r['diagnostics_cost']:+.1f}%   (target <= +10%)",
        )
    if "plain_loop" in r:
        lines += [
            f"(peer) plain one-model loop: {r['plain_loop']['seconds_per_model']:.2f} s per model"
            f"{_of(r['plain_loop'].get('all_seconds', []))}; (b) is {r['vs_plain']:.1f}x faster",
            f"(peer) torch.func ensembling: {r['func_ensemble']['seconds_per_model']:.2f} s per model "
            f"({r['func_ensemble']['models']} models){_of(r['func_ensemble'].get('all_seconds', []))}; "
            f"(b) is {r['vs_func']:.1f}x faster   (target >= 2.4x, >= 75% of (c) on executed FLOPs)",
        ]
        if "bound" in r:
            bd = r["bound"]
            lines.append(
                f"    what bounds (b): its products alone {bd['matmuls_seconds_per_model']:.2f} s/model "
                f"({100 * bd['share_of_b']['matmuls']:.0f}% of (b)) = "
                f"{100 * bd['matmuls_gemm_fraction_executed']:.0f}% of (c); its fused Adam alone "
                f"{bd['adam_seconds_per_model']:.2f} s ({100 * bd['share_of_b']['adam']:.0f}% of (b))"
            )
        t = r["tiny"]
        lines.append(
            f"tiny (heart rate 1-4-1, full batch, {t['steps']} steps, {t['models']} models): initlab "
            f"{1000 * t['seconds_per_model']['initlab']:.1f} ms per model "
            f"({t['ms_per_step_initlab']:.2f} ms "
            f"per stack step), {t['vs_plain']:.1f}x the plain loop, {t['vs_func']:.1f}x torch.func"
            + (
                f"; {t['ops_per_step']:.0f} ATen ops per stack step, {t['us_per_op']:.1f} us each"
                if "ops_per_step" in t
                else ""
            )
        )
    if "scaling" in r:
        lines += scaling_lines(r["scaling"])
    if "pipeline" in r:
        p = r["pipeline"]
        lines += [
            f"full dvc repro from clean: {p['full_repro_seconds']:.0f} s   (target <= 360 s)"
            + (": " + ", ".join(f"{k} {v:.0f} s" for k, v in p["breakdown"].items()) if "breakdown" in p else "")
            + (f"; I/O stall {p['io_stall_seconds']:.0f} s" if "io_stall_seconds" in p else ""),
            f"no-op dvc repro:           {p['noop_repro_seconds']:.1f} s   (target <= 2 s)",
            f"MLflow logging:            {p['mlflow_seconds']:.1f} s"
            f"{_of(p.get('mlflow_all_seconds', []), 'median')} = "
            f"{100 * p['mlflow_share_of_training']:.1f}% of {p['train_seconds']:.0f} s training"
            "   (target <= 15% and <= 20 s)",
        ]
    return lines
