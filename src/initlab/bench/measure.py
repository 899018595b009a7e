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

import os
import platform
import sys
from pathlib import Path

import torch

from initlab.bench import peers
from initlab.bench.ceilings import executed_flops_per_sample, gemm_gflops, matmul_ceiling
from initlab.bench.loops import fashion_mnist_peer_setup, initlab_per_model, seed_loop, tiny_peers
from initlab.bench.pipeline import time_pipeline
from initlab.errors import ParamsError
from initlab.params.paths import Paths
from initlab.params.schema import Params


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
    Needs Fashion-MNIST downloaded and prepared: a ``ParamsError`` saying so before anything runs.
    """
    from initlab.training.stacks import keep_freed_memory

    for need in (paths.raw("fashion_mnist"), paths.prepared("fashion_mnist")):
        if not need.exists():
            raise ParamsError(f"{need} missing; run `dvc repro normalize@fashion_mnist` first")

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
