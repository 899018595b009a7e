"""Saving a study's training: weights, loss curves, the runs and diagnostics tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from initlab.training.loop import Result


def save_results(results: list[Result], out: Path, platform: dict | None = None) -> None:
    """Weights (one state_dict per run), curves and a runs table, into the folder ``out``; and
    ``platform``, what computed them (default: this process's)."""
    import pandas as pd

    (out / "weights").mkdir(parents=True)
    rows, curves, diagnostics = [], {}, []
    for r in results:
        v = r.variant
        torch.save(r.module.state_dict(), out / "weights" / f"{v.run_name}.pt")
        curves[f"{v.run_name}/step_loss"] = r.step_loss.astype(np.float32)
        curves[f"{v.run_name}/val_loss"] = r.val_loss.astype(np.float32)
        curves[f"{v.run_name}/val_acc"] = r.val_acc.astype(np.float32)
        rows.append(
            {
                "run_name": v.run_name,
                "variant": v.name,
                "init": v.init,
                "loss": v.loss,
                "normalize": v.normalize,
                "lr": v.lr,
                "seed": v.seed,
                "reproduce": v.reproduce,
                **({"model": v.model} if v.model else {}),
                **r.final,
                "arch": json.dumps(r.arch),
            }
        )
        diagnostics += [{"run_name": v.run_name, **d} for d in r.diagnostics]
    from initlab.core.io import write_json
    from initlab.core.machine import platform_key

    write_json(out / "platform.json", platform or platform_key())  # what decided these bits
    np.savez(out / "curves.npz", **curves)
    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    pd.DataFrame(diagnostics).to_csv(out / "diagnostics.csv", index=False, float_format="%.6g")
