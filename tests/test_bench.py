"""The benchmark's arithmetic and its printed summary (the timed run itself is `initlab bench`)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO
from initlab.bench import ceilings, pipeline, summary


def test_executed_flops_skip_only_the_input_gradient():
    sizes = [784, 256, 128, 10]
    macs = 784 * 256 + 256 * 128 + 128 * 10
    nominal = 6 * macs  # forward 2, backward 4 per multiply-add
    assert ceilings.executed_flops_per_sample(sizes) == nominal - 2 * 784 * 256


def test_gemm_rate_counts_two_flops_per_multiply_add_of_the_fastest_product(monkeypatch):
    # calls: the deadline, then (loop check, start, end) per product: one of 4 ms, one of 2 ms
    clock = iter([0.0, 0.0, 0.0, 0.004, 0.004, 0.004, 0.006, 0.1])
    monkeypatch.setattr(ceilings.time, "perf_counter", lambda: next(clock))
    assert ceilings.gemm_gflops(n=64, seconds=0.01) == 2 * 64**3 / 0.002 / 1e9


def result(**figures) -> dict:
    """A bench result as `run_bench` returns it, with the pipeline's figures given."""
    return {
        "machine": {"cpu": "x", "cores": 2, "torch": "2"},
        "seed_loop": {"seconds": 15.0},
        "initlab": {"seconds_per_model": 1.0, "models": 14, "seconds": 14.0},
        "speedup": 15.0,
        "gemm_gflops": {"best": 170.0},
        "initlab_gflops": 135.0,
        "initlab_gemm_fraction": 135 / 170,
        "initlab_gemm_fraction_executed": 0.6,
        "initlab_no_diagnostics": {"seconds_per_model": 0.96, "seconds": 13.44},
        "diagnostics_cost": 14 / 13.44 - 1,
        "pipeline": {"full_repro_seconds": 280.0, "noop_repro_seconds": 2.5, **figures},
    }


def test_summary_prints_each_target_with_its_ratio():
    r = result(mlflow_seconds=9.0, mlflow_share_of_training=0.05, train_seconds=180.0)
    text = "\n".join(summary.summary_lines(r))
    for part in ("15.0x", "79% of (c)", "280 s", "2.5 s", "5.0% of 180 s", "diagnostics cost +4.2%"):
        assert part in text


def test_summary_names_the_fastest_of_repeated_runs():
    r = {
        "machine": {"cpu": "x", "cores": 2, "torch": "2"},
        "seed_loop": {"seconds": 15.0, "all_seconds": [15.0, 16.2]},
        "initlab": {"seconds_per_model": 1.0, "models": 28, "seconds": 28.0, "all_seconds": [30.1, 28.0]},
        "speedup": 15.0,
        "gemm_gflops": {"best": 170.0},
        "initlab_gflops": 135.0,
        "initlab_gemm_fraction": 135 / 170,
        "initlab_gemm_fraction_executed": 0.6,
    }
    text = "\n".join(summary.summary_lines(r))
    assert "(fastest of 2: 15.0, 16.2 s)" in text and "(fastest of 2: 30.1, 28.0 s)" in text


def test_summary_names_the_median_of_repeated_track_timings():
    r = result(
        mlflow_seconds=9.5,
        mlflow_all_seconds=[11.0, 9.5, 9.1],
        mlflow_share_of_training=9.5 / 120,
        train_seconds=120.0,
    )
    line = next(x for x in summary.summary_lines(r) if x.startswith("MLflow"))
    assert "9.5 s (median of 3: 11.0, 9.5, 9.1 s) = 7.9% of 120 s training" in line, line


@pytest.mark.parametrize(
    ("loss", "sizes", "activation"), [("cross_entropy", [6, 16, 3], "relu"), ("bce", [1, 4, 1], "sigmoid")]
)
def test_the_peers_train_what_they_claim(loss, sizes, activation):
    """torch.func ensembling of one model is the plain loop's model, step for step: the same
    draws, batches and optimiser; and both lower the loss (so the times compare real training)."""
    from initlab.bench import peers

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, sizes[0], generator=g)
    y = torch.randint(0, max(2, sizes[-1]), (60,), generator=g)
    kw = dict(
        x=x,
        y=y,
        sizes=sizes,
        activation=activation,
        dropout=0.0,
        loss=loss,
        optimizer="adam",
        lr=0.01,
        batch=20,
        epochs=3,
    )
    plain = peers.plain_loop(**kw)
    one = peers.func_ensemble(n_models=1, **kw)
    assert one["steps"] == plain["steps"] == 9
    assert one["last_loss"] == pytest.approx(plain["last_loss"], rel=1e-4)
    first = peers.plain_loop(**{**kw, "epochs": 1, "batch": None})["last_loss"]
    assert plain["last_loss"] < first


def test_scaling_table_lists_each_configuration():
    rows = [{"models": 4, "width": 256, "depth": 3, "ms_per_model_step": 1.234, "peak_mib_per_model": 5.67}]
    assert summary.scaling_lines(rows)[-1] == "| 4 | 256 | 3 | 1.23 | 5.7 |"


@pytest.mark.parametrize("sizes", [[784, 256, 128, 10], [1, 4, 1], [20, 40, 40, 40, 3]])
def test_the_ceiling_times_exactly_the_products_a_step_executes(sizes):
    """Wide and narrow layers alike: the products ``matmul_ceiling`` times are the step's executed
    FLOPs, each pair multipliable and as large as the layer's forward, weight or input gradient."""
    from initlab.nets.models import StackedMLP

    model, batch = StackedMLP(3, sizes), 7
    pairs = ceilings.step_matmuls(model, batch)
    flops = sum(2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2] for a, b in pairs)
    assert all(a.shape[2] == b.shape[1] for a, b in pairs)
    assert flops == 3 * batch * ceilings.executed_flops_per_sample(sizes)
    assert len(pairs) == 3 * (len(sizes) - 1) - 1


def test_count_ops_counts_what_autograd_dispatches():
    w = torch.ones(3, requires_grad=True)
    assert ceilings.count_ops(lambda: w.add(1.0)) == 1
    assert ceilings.count_ops(lambda: (w * 2.0).sum().backward()) > 3  # forward, then its gradient


def test_breakdown_splits_the_train_stages_into_training_and_the_rest():
    stages = {"prepare@a": 2.0, "train@a": 10.0, "train@b": 30.0, "track": 8.0}
    got = pipeline.breakdown(stages, train_seconds=34.0, total=51.0)
    assert got == {
        "training": 34.0,
        "track": 8.0,
        "train (outside training)": 6.0,
        "prepare": 2.0,
        "dvc start-up": 1.0,
    }
    assert list(got) == ["training", "track", "train (outside training)", "prepare", "dvc start-up"]


def test_summary_prints_what_bounds_each_missed_target():
    r = result(
        mlflow_seconds=9.0,
        mlflow_share_of_training=0.05,
        train_seconds=180.0,
        breakdown={"training": 180.0, "track": 9.0},
        io_stall_seconds=12.0,
    )
    r.update(
        plain_loop={"seconds_per_model": 2.0},
        func_ensemble={"seconds_per_model": 1.5, "models": 14},
        vs_plain=2.0,
        vs_func=1.5,
        bound={
            "matmuls_seconds_per_model": 0.7,
            "adam_seconds_per_model": 0.2,
            "matmuls_gemm_fraction_executed": 0.85,
            "share_of_b": {"matmuls": 0.7, "adam": 0.2},
        },
        tiny={
            "steps": 2000,
            "models": 20,
            "seconds_per_model": {"initlab": 0.07},
            "ms_per_step_initlab": 0.7,
            "vs_plain": 14.0,
            "vs_func": 1.7,
            "ops_per_step": 66.0,
            "us_per_op": 10.6,
        },
    )
    text = "\n".join(summary.summary_lines(r))
    for part in (
        "its products alone 0.70 s/model (70% of (b)) = 85% of (c)",
        "fused Adam alone 0.20 s (20% of (b))",
        "66 ATen ops per stack step, 10.6 us each",
        "280 s   (target <= 360 s): training 180 s, track 9 s",
        "I/O stall 12 s",
    ):
        assert part in text, part


def test_timed_repro_times_each_stage_from_dvcs_lines_and_names_a_failure(tmp_path):
    import os

    fake = tmp_path / "dvc"
    fake.write_text(
        "#!/bin/sh\necho \"Running stage 'train@x':\"\nsleep 0.5\necho \"Running stage 'report':\"\n"
        "echo done\nexit ${FAKE_RC:-0}\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    total, stages = pipeline.timed_repro(tmp_path, env)
    assert list(stages) == ["train@x", "report"]
    assert 0.4 <= stages["train@x"] < total  # the sleep, timed from its stage line (slack for a loaded machine)
    assert stages["train@x"] + stages["report"] == pytest.approx(total, abs=0.05)
    with pytest.raises(RuntimeError, match="(?s)dvc repro failed.*done"):
        pipeline.timed_repro(tmp_path, {**env, "FAKE_RC": "1"})


def test_summary_prints_the_platform_and_each_mkl_branchs_cost_and_bits():
    r = json.loads((REPO / "reports" / "bench.json").read_text())
    text = "\n".join(summary.summary_lines(r))
    assert "platform: " in text and "MKL runs its '" in text
    for branch in ("unset", "AVX2", "AVX2,STRICT", "COMPATIBLE"):
        assert f"MKL_CBWR={branch} " in text
    assert "(1.00x of unset), the same bits" in text


def test_each_mkl_branch_is_timed_in_its_own_process_and_compared_bit_for_bit():
    from initlab.core.machine import CBWR_BRANCHES, cbwr_branches

    out = cbwr_branches()
    assert list(out) == list(CBWR_BRANCHES)
    assert out["unset"]["same_bits_as_unset"] and out["unset"]["ratio"] == 1.0
    assert all(r["gflops"] > 0 for r in out.values())
    assert out["COMPATIBLE"]["same_bits_as_unset"] is False  # its SSE-era code path rounds otherwise, on any CPU
