"""The training loop: one group of models stacked in one ``StackedMLP``, trained step by step,
each model's result equal to training it alone (``train_group``), and what it returns (``Result``).

The study driver that forms the groups is ``initlab.training.study``; the scheduler that runs
stacks over threads is ``initlab.training.stacks``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from initlab.nets.diagnostics import Probe
from initlab.nets.heads import head_for, n_outputs, predictions, targets
from initlab.nets.models import DropoutStreams, StackedMLP, apply_head
from initlab.nets.optim import make_optimizer
from initlab.nets.registry import DATA_DEPENDENT, LOSSES
from initlab.params.schema import InitSpec, ModelSpec, StudyTrain
from initlab.params.variants import Variant


def architecture(spec: ModelSpec, n_in: int, n_classes: int, loss: str, normalize: str) -> dict:
    """Everything needed to rebuild a model: the arguments of ``StackedMLP`` / ``build_module``."""
    return {
        "sizes": [n_in, *spec.hidden, n_outputs(n_classes)],
        "activation": spec.activation,
        "dropout": spec.dropout,
        "batchnorm_input": normalize == "batchnorm",
        "head": head_for(loss, n_classes),
    }


@dataclass
class Result:
    """What training one model produced."""

    variant: Variant
    module: torch.nn.Module
    arch: dict
    step_loss: np.ndarray  # training loss per optimiser step, up to divergence
    val_loss: np.ndarray  # per epoch
    val_acc: np.ndarray  # per epoch
    final: dict = field(default_factory=dict)
    seconds: float = float("nan")  # this model's share of its stack's wall time (not hashed)
    diagnostics: list[dict] = field(default_factory=list)  # initlab.nets.diagnostics.Probe.rows


class GroupLoss:
    """Each model's loss in a group whose models may differ in loss (and so in head).

    The stack outputs logits; models of one loss are gathered, given their head (sigmoid,
    softmax or none) and their targets, and their per-model losses put back in model order.
    With one loss in the group this is a single call on the whole stack.
    """

    def __init__(self, names: list[str], n_classes: int, device) -> None:
        self.n_classes = n_classes
        self.parts = []
        for name in dict.fromkeys(names):
            idx = torch.tensor([m for m, n in enumerate(names) if n == name], device=device)
            self.parts.append((LOSSES[name], head_for(name, n_classes), idx))
        self.single = len(self.parts) == 1
        order = torch.cat([idx for _, _, idx in self.parts])
        self.inverse = torch.empty_like(order)
        self.inverse[order] = torch.arange(len(order), device=device)

    def targets(self, y: Tensor) -> list[Tensor]:
        """Labels in each part's form, computed once per split."""
        return [targets(y, loss, self.n_classes) for loss, _, _ in self.parts]

    def __call__(self, out: Tensor, ts: list[Tensor], y: Tensor | None = None):
        """Per-model losses ``(M,)``; with ``y``, also per-model accuracies."""
        losses, accs = [], []
        for (loss, head, idx), t in zip(self.parts, ts):
            o = apply_head(out if self.single else out.index_select(0, idx), head)
            tt = t.expand(o.shape[0], *t.shape) if loss.class_targets else t.expand_as(o)
            losses.append(loss.fn(o, tt))
            if y is not None:
                accs.append((predictions(o, head) == y.unsqueeze(0)).float().mean(dim=1))
        if self.single:
            return (losses[0], accs[0]) if y is not None else losses[0]
        cat = torch.cat(losses)[self.inverse]
        return (cat, torch.cat(accs)[self.inverse]) if y is not None else cat


class Stopped(Exception):
    """A stack's training was stopped because another failed or the process was interrupted."""


def _evaluate(
    model: StackedMLP,
    x: Tensor,
    y: Tensor,
    group_loss: GroupLoss,
    rows: int = 2048,
    dropout: DropoutStreams | None = None,
):
    """Per-model losses and accuracies on ``x``, in row chunks: a 12,000-image split of 14 models
    is 172 MB of first-layer activations at once, 24 MB per 2,048 rows.

    In eval mode, unless ``dropout`` is given: then in training mode with dropout on, drawing
    masks from ``dropout``, as seed 001 validates (it never calls ``model.eval()``)."""
    model.train(dropout is not None)
    with torch.no_grad():
        out = torch.cat([model(x[..., i : i + rows, :], dropout) for i in range(0, x.shape[-2], rows)], 1)
        losses, acc = group_loss(out, group_loss.targets(y), y)
    model.train()
    return losses, acc


def train_group(
    st: StudyTrain,
    group: list[Variant],
    inits: dict[str, InitSpec],
    data: dict[str, Tensor],
    n_classes: int,
    device: str = "cpu",
    progress: tqdm | None = None,
    stop: threading.Event | None = None,
    make_probe: Callable[..., Probe] | None = None,
) -> list[Result]:
    """Train the models of one group together; return one ``Result`` per variant, in order.

    ``stop``, when set by another thread, ends training at the next step with ``Stopped``.
    ``make_probe``: what takes the per-layer diagnostics, built with ``Probe``'s arguments (None:
    ``Probe``); ``initlab bench`` passes one that takes none, to time the trainer without them.
    """
    v0 = group[0]
    x, y = data["x_train"], data["y_train"]
    n = x.shape[-2]  # x: (n, in) shared by every model, or (M, n, in), one input per model
    M = len(group)
    # The stack gives logits; each model's head (by its loss) is applied in GroupLoss.
    spec = st.spec(v0.model)
    arch = {**architecture(spec, x.shape[-1], n_classes, v0.loss, v0.normalize), "head": "none"}
    model = StackedMLP(M, **arch).to(device)
    group_loss = GroupLoss([v.loss for v in group], n_classes, device)
    # Each model draws its initial weights from its own generator, seeded by its seed; its
    # dropout masks come from its seed's dropout stream, drawn once for the models sharing it.
    gens = [torch.Generator(device).manual_seed(v.seed) for v in group]
    specs = [inits[v.init] for v in group]
    model.initialise(specs, gens)
    # The probe batch: the training split's first rows (diagnostics, and LSUV's batch).
    p_rows = min(st.diagnostics.probe_rows, n)
    x_probe, ts_probe = x[..., :p_rows, :], group_loss.targets(y[:p_rows])
    data_dependent = [m for m, sp in enumerate(specs) if sp.name in DATA_DEPENDENT]
    if data_dependent:  # LSUV: rescale each layer to unit output std on the probe batch
        model.lsuv(
            x_probe,
            data_dependent,
            [specs[m].args.get("tol", 0.1) for m in data_dependent],
            [specs[m].args.get("max_rounds", 10) for m in data_dependent],
        )
    masks = DropoutStreams([v.seed for v in group], device) if spec.dropout > 0 else None
    lr = torch.tensor([v.lr for v in group], dtype=torch.float32, device=device)
    opt = make_optimizer(st.optimizer, list(model.parameters()), lr)
    bs = st.batch_size or n
    order_gen = torch.Generator().manual_seed(v0.seed)
    steps_per_epoch = (n + bs - 1) // bs
    y_all = group_loss.targets(y)
    step_loss = torch.full((st.epochs * steps_per_epoch, M), float("nan"))
    val_loss = torch.full((st.epochs, M), float("nan"))
    val_acc = torch.full((st.epochs, M), float("nan"))
    diverged_at = torch.full((M,), -1, dtype=torch.long)
    alive = torch.ones(M, dtype=torch.bool)
    # Long full-batch runs (10,000 epochs) are validated at a stride: ~1,000 points per curve.
    val_every = st.val_every or max(1, st.epochs // 1000)
    seed_protocol = v0.reproduce and st.reproduce is not None and st.reproduce.validate_with_dropout
    val_masks = masks if seed_protocol else None  # seed 001 validates with dropout on
    step = 0
    probe = (make_probe or Probe)(
        model, x_probe, ts_probe, group_loss, st.diagnostics.at_steps, st.epochs * steps_per_epoch
    )
    model.train()
    for epoch in range(st.epochs):
        order = torch.randperm(n, generator=order_gen) if st.shuffle and bs < n else None
        for start in range(0, n, bs):
            if stop is not None and stop.is_set():
                raise Stopped
            if order is None:
                xb, tb = x[..., start : start + bs, :], [t[start : start + bs] for t in y_all]
            else:
                idx = order[start : start + bs].to(device)
                xb, tb = x[..., idx, :], [t[idx] for t in y_all]
            diagnose = probe.wants(step)
            if diagnose:
                probe.before(step)
            losses = group_loss(model(xb, masks), tb)
            opt.zero_grad()
            losses.sum().backward()
            opt.step()
            if diagnose:
                probe.after(step)
            step_loss[step] = losses.detach()
            step += 1
        finite = torch.isfinite(step_loss[step - steps_per_epoch : step])
        bad = alive & ~finite.all(dim=0)
        if bad.any():  # a diverged model stops at its first non-finite loss; the others go on
            first = (~finite).float().argmax(dim=0) + step - steps_per_epoch
            diverged_at[bad] = first[bad]
            alive &= ~bad
        if (epoch + 1) % val_every == 0 or epoch == st.epochs - 1:
            vl, va = _evaluate(model, data["x_val"], data["y_val"], group_loss, dropout=val_masks)
            val_loss[epoch], val_acc[epoch] = vl.cpu(), va.cpu()
        if progress is not None:
            progress.update(M)
        if not alive.any():
            break
    probe.end(step)
    if st.eval_train:
        tl, ta = _evaluate(model, x, y, group_loss)
    else:
        tl = ta = torch.full((M,), float("nan"))
    model = model.cpu()
    results = []
    for m, v in enumerate(group):
        last = diverged_at[m].item() if diverged_at[m] >= 0 else step
        sl = step_loss[:last, m].numpy()
        last_epoch = sl[-steps_per_epoch:] if len(sl) else np.array([np.nan])
        diverged = bool(diverged_at[m] >= 0)
        final = {
            "diverged": int(diverged),
            "diverged_step": int(diverged_at[m]),
            "steps": int(last),
            # seed 001 reports the mean batch loss of the last epoch; full batch: the last step.
            "train_loss": float("nan") if diverged else float(last_epoch.mean()),
            "train_loss_last_step": float("nan") if diverged else float(sl[-1]),
            "train_accuracy": float("nan") if diverged else float(ta[m]),
            "train_loss_eval": float("nan") if diverged else float(tl[m]),
            "val_loss": float("nan") if diverged else float(val_loss[epoch, m]),
            "val_accuracy": float("nan") if diverged else float(val_acc[epoch, m]),
        }
        arch_m = architecture(spec, x.shape[-1], n_classes, v.loss, v.normalize)
        results.append(
            Result(
                v,
                model.to_module(m, arch_m["head"]),
                arch_m,
                sl,
                val_loss[:, m].numpy(),
                val_acc[:, m].numpy(),
                final,
                diagnostics=probe.rows(m),
            )
        )
    return results
