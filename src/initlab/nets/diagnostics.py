"""Why a model trains or not: per-layer statistics of every stacked model on a fixed probe batch.

At initialisation, before chosen optimiser steps and after the last, for each layer k of each
model (``Probe``): the mean and standard deviation of its pre-activations and activations over
the probe rows and units; the share of saturated units (|tanh| > 0.97, sigmoid < 0.03 or > 0.97)
and of dead ReLUs (zero for every probe row); the norm of the gradient of the model's mean loss on
the probe batch with respect to W_k, and its ratio to ||W_k||; and the size of the optimiser's
update at that step relative to W_k, ||ΔW_k|| / ||W_k|| (Frobenius norms). The statistics that
Glorot & Bengio (2010, figures 2-7) and He et al. (2015, section 2.2) read to explain a failure.

The probe runs in eval mode (no dropout), under ``torch.no_grad`` for the update and with
``torch.autograd.grad`` for the gradients, so it changes no weight, gradient or random stream: a
model's training is the same bit for bit with or without it.
"""

from __future__ import annotations

import torch
from torch import Tensor

STATS = (
    "pre_mean",
    "pre_std",
    "act_mean",
    "act_std",
    "saturated",
    "dead",
    "grad_norm",
    "grad_ratio",
    "update_ratio",
)
SATURATED = 0.97  # |tanh| above, or sigmoid within 0.03 of 0 or 1


def layer_stats(model, x: Tensor, ts: list[Tensor], group_loss) -> dict[str, Tensor]:
    """Every statistic but ``update_ratio``, each ``(M, layers)``, of ``model`` on probe rows ``x``
    with targets ``ts`` (``GroupLoss.targets``)."""
    was = model.training
    model.eval()
    record: list = []
    with torch.enable_grad():
        out = model(x, record=record)
        grads = torch.autograd.grad(group_loss(out, ts).sum(), list(model.weights), allow_unused=True)
    model.train(was)
    act_fn = model.activation
    cols: dict[str, list[Tensor]] = {k: [] for k in STATS[:-1]}
    nan = torch.full((model.n_models,), float("nan"), device=out.device)
    with torch.no_grad():
        for (pre, act), w, g in zip(record, model.weights, grads):
            cols["pre_mean"].append(pre.mean(dim=(1, 2)))
            cols["pre_std"].append(pre.flatten(1).std(dim=1, correction=0))
            if act is None:  # the output layer: logits, no hidden activation
                for k in ("act_mean", "act_std", "saturated", "dead"):
                    cols[k].append(nan)
            else:
                cols["act_mean"].append(act.mean(dim=(1, 2)))
                cols["act_std"].append(act.flatten(1).std(dim=1, correction=0))
                if act_fn == "tanh":
                    sat = act.abs() > SATURATED
                elif act_fn == "sigmoid":
                    sat = (act < 1 - SATURATED) | (act > SATURATED)
                cols["saturated"].append(nan if act_fn == "relu" else sat.float().mean(dim=(1, 2)))
                cols["dead"].append((act == 0).all(dim=1).float().mean(dim=1) if act_fn == "relu" else nan)
            gn = g.flatten(1).norm(dim=1) if g is not None else nan
            cols["grad_norm"].append(gn)
            cols["grad_ratio"].append(gn / w.detach().flatten(1).norm(dim=1))
    return {k: torch.stack(v, dim=1).cpu() for k, v in cols.items()}


class Probe:
    """The diagnostics of one stack's training: call ``before(step)`` before each optimiser step,
    ``after(step)`` after it, and ``end(steps)`` once training stops."""

    def __init__(self, model, x: Tensor, ts: list[Tensor], group_loss, at_steps: list[int], total: int) -> None:
        self.model, self.x, self.ts, self.group_loss = model, x, ts, group_loss
        self.at = {s for s in at_steps if s < total}
        self.last = total - 1  # its update is the one reported at the end
        self.points: list[tuple[str, int, dict[str, Tensor]]] = []
        self._before: list[Tensor] | None = None
        self._update: Tensor | None = None

    def wants(self, step: int) -> bool:
        return step in self.at or step == self.last

    def before(self, step: int) -> None:
        if step in self.at:
            stats = layer_stats(self.model, self.x, self.ts, self.group_loss)
            self.points.append(("init" if step == 0 else f"step{step}", step, stats))
        self._before = [w.detach().clone() for w in self.model.weights]

    @torch.no_grad()
    def after(self, step: int) -> None:
        ratio = torch.stack(
            [
                (w - w0).flatten(1).norm(dim=1) / w0.flatten(1).norm(dim=1)
                for w, w0 in zip(self.model.weights, self._before)
            ],
            dim=1,
        ).cpu()
        self._before = None
        for _, s, stats in self.points:
            if s == step:
                stats["update_ratio"] = ratio
        if step == self.last:
            self._update = ratio

    def end(self, steps: int) -> None:
        stats = layer_stats(self.model, self.x, self.ts, self.group_loss)
        nan = torch.full_like(stats["grad_norm"], float("nan"))
        stats["update_ratio"] = self._update if self._update is not None else nan
        self.points.append(("end", steps, stats))
        for _, _, st in self.points:
            st.setdefault("update_ratio", nan)

    def rows(self, m: int) -> list[dict]:
        """Model ``m``'s statistics: one row per point and layer (layers numbered from 1)."""
        out = []
        for label, step, stats in self.points:
            layers = stats["pre_mean"].shape[1]
            for k in range(layers):
                out.append(
                    {"point": label, "step": step, "layer": k + 1, **{s: float(stats[s][m, k]) for s in STATS}}
                )
        return out
