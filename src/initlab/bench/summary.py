"""The bench's printed summary: the platform, each measurement and its ratios, in lines."""

from __future__ import annotations


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
    from initlab.bench.cluster import ray_lines

    lines += ray_lines(r)
    return lines
