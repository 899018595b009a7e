"""The benchmark's arithmetic and its printed summary (the timed run itself is `initlab bench`)."""

from __future__ import annotations

import pytest
import torch

from initlab import bench


def test_executed_flops_skip_only_the_input_gradient():
    sizes = [784, 256, 128, 10]
    macs = 784 * 256 + 256 * 128 + 128 * 10
    nominal = 6 * macs  # forward 2, backward 4 per multiply-add
    assert bench.executed_flops_per_sample(sizes) == nominal - 2 * 784 * 256


def test_gemm_rate_counts_two_flops_per_multiply_add_of_the_fastest_product(monkeypatch):
    # calls: the deadline, then (loop check, start, end) per product: one of 4 ms, one of 2 ms
    clock = iter([0.0, 0.0, 0.0, 0.004, 0.004, 0.004, 0.006, 0.1])
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    assert bench.gemm_gflops(n=64, seconds=0.01) == 2 * 64**3 / 0.002 / 1e9


def result(**pipeline) -> dict:
    """A bench result as `run_bench` returns it, with the pipeline's figures given."""
    return {"machine": {"cpu": "x", "cores": 2, "torch": "2"},
            "seed_loop": {"seconds": 15.0}, "initlab": {"seconds_per_model": 1.0, "models": 14,
                                                       "seconds": 14.0},
            "speedup": 15.0, "gemm_gflops": {"best": 170.0}, "initlab_gflops": 135.0,
            "initlab_gemm_fraction": 135 / 170, "initlab_gemm_fraction_executed": 0.6,
            "initlab_no_diagnostics": {"seconds_per_model": 0.96, "seconds": 13.44},
            "diagnostics_cost": 14 / 13.44 - 1,
            "pipeline": {"full_repro_seconds": 280.0, "noop_repro_seconds": 2.5, **pipeline}}  # fmt: skip


def test_summary_prints_each_target_with_its_ratio():
    r = result(mlflow_seconds=9.0, mlflow_share_of_training=0.05, train_seconds=180.0)
    text = "\n".join(bench.summary_lines(r))
    for part in ("15.0x", "79% of (c)", "280 s", "2.5 s", "5.0% of 180 s", "diagnostics cost +4.2%"):
        assert part in text


def test_summary_names_the_fastest_of_repeated_runs():
    r = {"machine": {"cpu": "x", "cores": 2, "torch": "2"},
         "seed_loop": {"seconds": 15.0, "all_seconds": [15.0, 16.2]},
         "initlab": {"seconds_per_model": 1.0, "models": 28, "seconds": 28.0,
                     "all_seconds": [30.1, 28.0]},
         "speedup": 15.0, "gemm_gflops": {"best": 170.0}, "initlab_gflops": 135.0,
         "initlab_gemm_fraction": 135 / 170, "initlab_gemm_fraction_executed": 0.6}  # fmt: skip
    text = "\n".join(bench.summary_lines(r))
    assert "(fastest of 2: 15.0, 16.2 s)" in text and "(fastest of 2: 30.1, 28.0 s)" in text


def test_summary_names_the_median_of_repeated_track_timings():
    r = result(mlflow_seconds=9.5, mlflow_all_seconds=[11.0, 9.5, 9.1],
               mlflow_share_of_training=9.5 / 120, train_seconds=120.0)  # fmt: skip
    line = next(x for x in bench.summary_lines(r) if x.startswith("MLflow"))
    assert "9.5 s (median of 3: 11.0, 9.5, 9.1 s) = 7.9% of 120 s training" in line, line


@pytest.mark.parametrize(("loss", "sizes", "activation"), [("cross_entropy", [6, 16, 3], "relu"),
                                                           ("bce", [1, 4, 1], "sigmoid")])  # fmt: skip
def test_the_peers_train_what_they_claim(loss, sizes, activation):
    """torch.func ensembling of one model is the plain loop's model, step for step: the same
    draws, batches and optimiser; and both lower the loss (so the times compare real training)."""
    from initlab import peers

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, sizes[0], generator=g)
    y = torch.randint(0, max(2, sizes[-1]), (60,), generator=g)
    kw = dict(x=x, y=y, sizes=sizes, activation=activation, dropout=0.0, loss=loss, optimizer="adam",
              lr=0.01, batch=20, epochs=3)  # fmt: skip
    plain = peers.plain_loop(**kw)
    one = peers.func_ensemble(n_models=1, **kw)
    assert one["steps"] == plain["steps"] == 9
    assert one["last_loss"] == pytest.approx(plain["last_loss"], rel=1e-4)
    first = peers.plain_loop(**{**kw, "epochs": 1, "batch": None})["last_loss"]
    assert plain["last_loss"] < first


def test_scaling_table_lists_each_configuration():
    rows = [{"models": 4, "width": 256, "depth": 3, "ms_per_model_step": 1.234, "peak_mib_per_model": 5.67}]
    assert bench.scaling_lines(rows)[-1] == "| 4 | 256 | 3 | 1.23 | 5.7 |"
