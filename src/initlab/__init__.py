"""initlab: how weight initialisation, loss choice and input normalisation decide whether a network trains.

Importing the package pins the CPU kernels of numpy and torch to their AVX2 versions, so that
machines with and without AVX-512 compute the same bits (README, "Reproducing"). It must happen
before numpy or torch is imported, which is why it lives here.
"""

from __future__ import annotations

import os
import sys

# Each variable selects the AVX2 code path of one library, read when that library loads:
# - numpy: its dispatched kernels, sorting among them. np.argsort of tied values, which
#   scipy.signal.find_peaks(distance=...) uses, orders ties differently in the AVX-512 sort, so
#   the heart-rate study kept other R-peaks (mean 105.90 bpm instead of 105.91).
# - ATen (torch's own CPU kernels): log_softmax and other vectorised ops round differently in
#   their AVX-512 build, which moved Fashion-MNIST's test accuracies in the third decimal.
# MKL (torch's GEMMs) is left alone. It takes vendor-specific code paths: AMD hosts with and
# without AVX-512 agreed, an Intel host did not. Its reproducibility switch MKL_CBWR gives the
# same bits as unset on AMD except for COMPATIBLE (slower, and other bits), and no setting was
# shown to make Intel agree with AMD; `initlab bench` measures each branch, `initlab.core.machine`
# records the platform and `initlab verify` bounds what a platform change moves (README).
PINNED_KERNELS = {
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "ATEN_CPU_CAPABILITY": "avx2",
}
NATIVE_SWITCH = "INITLAB_NATIVE_KERNELS"  # =1: every library picks its fastest kernels


def _pin_kernels() -> None:
    if os.environ.get(NATIVE_SWITCH, "") not in ("", "0"):
        return
    for name, value in PINNED_KERNELS.items():
        os.environ.setdefault(name, value)  # a value the user set wins


_NUMPY_FIRST = "numpy" in sys.modules  # then numpy chose its kernels before the pin
_pin_kernels()


def kernels() -> dict[str, object]:
    """What numpy and torch actually run with in this process (for bench.json and the tests)."""
    out: dict[str, object] = {name: os.environ.get(name) for name in PINNED_KERNELS}
    out["numpy_loaded_before_initlab"] = _NUMPY_FIRST
    from numpy._core._multiarray_umath import __cpu_features__

    out["numpy_avx512"] = bool(__cpu_features__.get("X86_V4") or __cpu_features__.get("AVX512_ICL"))
    import torch

    out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return out
