"""The numeric platform: everything that decides the bits a run computes, named in one place.

Two runs with the same params and seed give the same bytes when their ``platform_key`` is equal:
the CPU vendor (MKL takes vendor-specific code paths), MKL's code path and its conditional
numerical reproducibility (CNR) mode, ATen's CPU capability, whether numpy's AVX-512 kernels
are on, and the versions of torch, numpy and MKL. The core count is not part of it: training and
evaluation run every stack on one intra-op thread and split groups by a constant
(``initlab.training.stacks.SPLIT_PARTS``), so the bits do not follow the cores (tests/test_threads.py).
``fingerprint`` adds what describes the machine without deciding the bits (model, cores, flags).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

# Variables read when MKL, ATen or numpy load, which select their kernels.
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "NPY_DISABLE_CPU_FEATURES", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")
VECTOR_UNITS = ("avx2", "avx512f", "amx_tile")  # the ones MKL and ATen dispatch on


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name in ("vendor_id", "model name", "flags") and name not in out:
                out[name] = value.strip()
    return out


MKL_PROBE = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
n, one, zero, t = ctypes.c_int(4), ctypes.c_float(1.0), ctypes.c_float(0.0), ctypes.c_char(b"N")
a, c = (ctypes.c_float * 16)(*([1.0] * 16)), (ctypes.c_float * 16)()
r = ctypes.byref
lib.sgemm_(r(t), r(t), r(n), r(n), r(n), r(one), a, r(n), a, r(n), r(zero), c, r(n))
"""


@cache
def mkl_code_path() -> tuple[str, str]:
    """MKL's own words for the code path it runs here, and the CNR mode of an SGEMM: one SGEMM
    with ``MKL_VERBOSE=1`` in a child process (MKL reads the variable once, when it loads)."""
    import torch

    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        out = subprocess.run(
            [sys.executable, "-c", MKL_PROBE, str(lib)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "MKL_VERBOSE": "1"},
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    path = re.search(r"for Intel\(R\) 64 architecture (.*?), Lnx", out)
    cnr = re.search(r"CNR:(\S+)", out)
    return (path.group(1) if path else "unknown"), (cnr.group(1) if cnr else "unknown")


def platform_key() -> dict[str, object]:
    """What decides the bits (``KEY_FIELDS``), read without running MKL: its code path follows
    from the vendor, the vector units and the two MKL variables. Equal keys, equal results."""
    import numpy as np
    import torch
    from numpy._core._multiarray_umath import __cpu_features__ as npf

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    mkl = re.search(r"Math Kernel Library Version ([0-9.]+)", torch.__config__.show())
    return {
        "cpu_vendor": info.get("vendor_id", "unknown"),
        "cpu_vector_units": " ".join(f for f in VECTOR_UNITS if f in flags) or "none",
        "mkl_cbwr": os.environ.get("MKL_CBWR") or "unset",
        "mkl_enable_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS") or "unset",
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "numpy_avx512": bool(npf.get("X86_V4") or npf.get("AVX512_ICL")),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "mkl": mkl.group(1) if mkl else "none",
    }


def fingerprint() -> dict[str, object]:
    """``platform_key`` and what else describes the machine: CPU model and its vector units,
    cores and threads, and the kernel variables as set in this process."""
    import torch

    code_path, cnr = mkl_code_path()
    return {
        **platform_key(),
        "mkl_code_path": code_path,
        "mkl_cnr": cnr,
        "cpu_model": _cpuinfo().get("model name", "unknown"),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "variables": {name: os.environ.get(name) for name in KERNEL_VARIABLES},
    }


def describe(key: dict) -> str:
    """One line, e.g. ``AuthenticAMD (avx2 avx512f), MKL 2024.2 (MKL_CBWR unset), ATen AVX2, ...``."""
    numpy = "numpy AVX-512" if key.get("numpy_avx512") else "numpy without AVX-512"
    cbwr = key.get("mkl_cbwr")
    return (
        f"{key.get('cpu_vendor')} ({key.get('cpu_vector_units')}), MKL {key.get('mkl')} (MKL_CBWR {cbwr}"
        + (
            f", MKL_ENABLE_INSTRUCTIONS {key['mkl_enable_instructions']}"
            if key.get("mkl_enable_instructions") not in (None, "unset")
            else ""
        )
        + f"), ATen {key.get('aten_capability')}, {numpy}, torch {key.get('torch')}"
    )


CBWR_BRANCHES = ("unset", "AVX2", "AVX2,STRICT", "COMPATIBLE")  # MKL's CNR modes worth trying
CBWR_PROBE = """
import hashlib, json, time, torch
torch.manual_seed(0)
a, b = torch.randn(18, 100, 784), torch.randn(18, 784, 256)
out = torch.bmm(a, b)
best = float("inf")
for _ in range(30):
    t = time.perf_counter(); torch.bmm(a, b); best = min(best, time.perf_counter() - t)
print(json.dumps({"gflops": 2 * 18 * 100 * 784 * 256 / best / 1e9,
                  "sha256": hashlib.sha256(out.numpy().tobytes()).hexdigest()}))
"""


def cbwr_branches(threads: int = 1) -> dict[str, dict]:
    """Each MKL CNR branch (``MKL_CBWR``) on Fashion-MNIST's first layer as the trainer runs it
    (18 models x 100 x 784 x 256 ``bmm``, ``threads`` threads): its GFLOP/s, the CNR mode MKL
    reports, and whether its bits equal those of MKL_CBWR unset. Each branch in a child process,
    since MKL reads the variable once."""
    import json

    out: dict[str, dict] = {}
    for branch in CBWR_BRANCHES:
        env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
        if branch != "unset":
            env["MKL_CBWR"] = branch
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        p = subprocess.run(
            [sys.executable, "-c", "import initlab\n" + CBWR_PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if p.returncode != 0:
            out[branch] = {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
            continue
        out[branch] = json.loads(p.stdout.strip().splitlines()[-1])
    base = out.get("unset", {})
    for r in out.values():
        if "gflops" in r and "gflops" in base:
            r["ratio"] = r["gflops"] / base["gflops"]
            r["same_bits_as_unset"] = r["sha256"] == base["sha256"]
    return out
