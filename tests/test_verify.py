"""initlab verify's gate: exact on the committed platform, a seed-spread test elsewhere."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from initlab.results.verify import ALPHA, compare, record, summary, variant_p

AMD = {"cpu_vendor": "AuthenticAMD", "mkl_cbwr": "unset"}
INTEL = {"cpu_vendor": "GenuineIntel", "mkl_cbwr": "unset"}


def rec(platform: dict, **variants: list[float | None]) -> dict:
    return {
        "platform": platform,
        "verdict": {},
        "test_accuracy": {v: {str(i): a for i, a in enumerate(accs)} for v, accs in variants.items()},
    }


def study(platform, shift=0.0, noise=0.0, seed=0, n=5, **kw):
    rng = np.random.default_rng(seed)
    base = {"a": 0.85, "b": 0.80, "c": 0.10}
    out = {}
    for v, m in base.items():
        accs = m + 0.004 * np.random.default_rng(hash(v) % 2**32).standard_normal(n)
        accs = accs + noise * rng.standard_normal(n) + (shift if v == kw.get("regress", "b") else 0.0)
        out[v] = [round(float(x), 4) for x in accs] if v != "c" else [0.1] * n  # c: stuck at chance
    return {"s": rec(platform, **out)}


def test_equal_records_are_identical_on_any_platform():
    assert compare(study(AMD), study(AMD)).status == "identical"
    assert compare(study(AMD), study(INTEL)).status == "identical"


def test_on_the_committed_platform_any_move_is_a_regression():
    c = compare(study(AMD), study(AMD, noise=0.0005, seed=1))
    assert c.same_platform and c.status == "regression" and len(c.regressions) == 2  # a and b moved, c did not


def test_on_another_platform_rounding_noise_within_the_seed_spread_passes():
    c = compare(study(AMD), study(INTEL, noise=0.003, seed=2))
    assert not c.same_platform and c.status == "within bound", [(m.variant, m.p_holm) for m in c.moves]
    assert {m.variant for m in c.moves} == {"a", "b"}


def test_on_another_platform_a_shift_of_several_spreads_is_a_regression():
    c = compare(study(AMD), study(INTEL, shift=-0.03, noise=0.003, seed=2))
    assert c.status == "regression" and [m.variant for m in c.regressions] == ["b"]
    assert c.regressions[0].p_holm < ALPHA and c.regressions[0].delta == pytest.approx(-0.03, abs=0.006)


def test_diverged_seeds_are_tested_by_count_and_a_missing_variant_fails():
    ref = {"s": rec(AMD, a=[0.8, 0.81, 0.8, 0.79, 0.8, 0.8, 0.81, 0.8])}
    all_diverged = {"s": rec(INTEL, a=[None] * 8)}
    assert compare(ref, all_diverged).status == "regression"
    one = {"s": rec(INTEL, a=[0.8, 0.81, 0.8, 0.79, 0.8, 0.8, 0.81, None])}
    assert compare(ref, one).status == "within bound"
    assert compare(ref, {"s": rec(INTEL)}).missing == ["s: a"]


def test_a_single_seed_variant_is_judged_on_the_studys_pooled_spread():
    pooled = (0.01, 8)
    assert variant_p({"0": 0.80}, {"0": 0.805}, pooled) > 0.5
    assert variant_p({"0": 0.80}, {"0": 0.70}, pooled) < 1e-3
    assert variant_p({"0": 0.5, "1": 0.5}, {"0": 0.6, "1": 0.6}, pooled) == 0.0  # no spread at all: moved


def test_holm_corrects_over_every_move():
    # 20 variants each moved by noise: no raw p is below 0.01/20 by chance here, so none fails
    rng = np.random.default_rng(5)
    ref = {f"v{i}": list(0.8 + 0.005 * rng.standard_normal(5)) for i in range(20)}
    new = {k: list(np.array(v) + 0.005 * rng.standard_normal(5)) for k, v in ref.items()}
    c = compare({"s": rec(AMD, **ref)}, {"s": rec(INTEL, **new)})
    assert len(c.moves) == 20 and all(m.p_holm >= m.p for m in c.moves) and c.status == "within bound"


def test_the_summary_names_the_verdict_the_platforms_and_the_moved_verdicts():
    ref, new = study(AMD), study(INTEL, shift=-0.03, noise=0.003, seed=2)
    ref["s"]["verdict"], new["s"]["verdict"] = {"b": "indistinguishable"}, {"b": "worse"}
    lines = summary(compare(ref, new), AMD, INTEL)
    assert lines[0].startswith("regression: 1 variants moved") and "s/b: " in lines[1]
    assert any(line.startswith("committed on: AuthenticAMD") for line in lines)
    assert "  s/b: indistinguishable -> worse" in lines


def test_record_holds_every_run_by_variant_and_seed_with_none_for_diverged():
    df = pd.DataFrame(
        {
            "variant": ["x", "x", "y", "y"],
            "seed": [0, 1, 0, 1],
            "test_accuracy": [0.5, 0.6, np.nan, np.nan],
            "diverged": [False, False, True, True],
            "init": ["i"] * 4,
            "loss": ["mse"] * 4,
            "normalize": ["none"] * 4,
            "lr": [0.1] * 4,
            "reproduce": [False] * 4,
            "run_name": list("abcd"),
            "val_accuracy": [0.5] * 4,
        }
    )
    r = record(df, AMD)
    assert r["platform"] == AMD and r["test_accuracy"] == {"x": {"0": 0.5, "1": 0.6}, "y": {"0": None, "1": None}}
    assert r["verdict"]["y"] == "diverged"
