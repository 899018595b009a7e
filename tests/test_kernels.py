"""Pinned CPU kernels: machines with and without AVX-512 compute the same numbers."""

from __future__ import annotations

from conftest import MIRROR, fresh_process_json

PROBE = "import json, initlab; print(json.dumps(initlab.kernels()))"


def probe(**env: str) -> dict:
    return fresh_process_json(
        PROBE, ("INITLAB_NATIVE_KERNELS", "NPY_DISABLE_CPU_FEATURES", "ATEN_CPU_CAPABILITY"), **env
    )


def test_importing_initlab_pins_numpy_and_torch_to_their_avx2_kernels():
    k = probe()
    assert k["torch_cpu_capability"] == "AVX2" and k["numpy_avx512"] is False
    assert not k["numpy_loaded_before_initlab"]


def test_a_value_the_user_set_wins_and_the_switch_turns_the_pin_off():
    assert probe(ATEN_CPU_CAPABILITY="default")["torch_cpu_capability"] == "DEFAULT"
    native = probe(INITLAB_NATIVE_KERNELS="1")
    assert native["ATEN_CPU_CAPABILITY"] is None and native["NPY_DISABLE_CPU_FEATURES"] is None


def test_heart_rate_peaks_are_the_avx2_ones():
    """find_peaks(distance=150) keeps, among tied R-peak heights, the ones np.argsort puts last;
    numpy's AVX-512 sort orders ties otherwise, and kept other beats: mean 105.90 bpm, not 105.91."""
    from initlab import kernels
    from initlab.data.prepare import heart_rate_bpm

    assert not kernels()["numpy_loaded_before_initlab"]  # so the pin reached this process
    bpm = heart_rate_bpm(MIRROR / "ecg" / "ecg.dat", 360.0, 150)
    assert len(bpm) == 519
    assert (round(float(bpm.mean()), 2), round(float(bpm.std()), 2)) == (105.91, 13.9)
