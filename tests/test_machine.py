"""The numeric platform: what decides the bits is named, read without side effects, and recorded."""

from __future__ import annotations

import json

from conftest import fresh_process_json

PROBE = (
    "import json, initlab.core.machine as m; "
    "print(json.dumps({'key': m.platform_key(), 'mkl': m.mkl_code_path()}))"
)


def probe(**env: str) -> dict:
    return fresh_process_json(PROBE, ("MKL_CBWR", "INITLAB_NATIVE_KERNELS"), **env)


def test_the_key_names_vendor_vector_units_mkl_branch_kernels_and_versions():
    from initlab.core.machine import describe, platform_key

    k = platform_key()
    assert set(k) == {
        "cpu_vendor",
        "cpu_vector_units",
        "mkl_cbwr",
        "mkl_enable_instructions",
        "aten_capability",
        "numpy_avx512",
        "torch",
        "numpy",
        "mkl",
    }
    assert k["cpu_vendor"] in ("AuthenticAMD", "GenuineIntel") and "avx2" in k["cpu_vector_units"]
    assert k["aten_capability"] == "AVX2" and k["numpy_avx512"] is False  # initlab's pin
    assert k["mkl"][:4].isdigit() and "\n" not in describe(k)


def test_mkls_branch_is_in_the_key_and_mkl_itself_reports_it():
    plain, compatible = probe(), probe(MKL_CBWR="COMPATIBLE")
    assert plain["key"]["mkl_cbwr"] == "unset" and compatible["key"]["mkl_cbwr"] == "COMPATIBLE"
    assert plain["mkl"][1] == "OFF" and compatible["mkl"][1] == "COMPATIBLE"  # MKL_VERBOSE's CNR field
    assert plain["mkl"][0] not in ("unknown", "none")


def test_training_records_the_platform_beside_its_weights(small_root, params):
    from initlab.core.machine import platform_key
    from initlab.training.save import save_results
    from initlab.training.study import train_study

    out = small_root.root / "saved"
    save_results(train_study(params, "line", small_root, "cpu", show_progress=False), out)
    assert json.loads((out / "platform.json").read_text()) == platform_key()
