"""Training: every variant of a study, grouped so that models sharing data and optimiser settings
train together in one ``StackedMLP``; each model's result equals training it alone.

A group is the set of variants with the same loss, normalisation and data order (the seed, when
batches are shuffled). Inside it models differ by initialiser, learning rate and seed.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from initlab.config import InitSpec, Params, Paths, StudyTrain, Variant, variants
from initlab.models import StackedMLP
from initlab.optim import make_optimizer
from initlab.registry import LOSSES, Loss


def head_for(loss: str, n_classes: int) -> str:
    if LOSSES[loss].on_logits:
        return "none"
    return "sigmoid" if n_classes == 2 else "softmax"


def n_outputs(n_classes: int) -> int:
    return 1 if n_classes == 2 else n_classes


def targets(y: Tensor, loss: Loss, n_classes: int) -> Tensor:
    """Labels in the form the loss wants: class indices, {0, 1} column, or one-hot."""
    if loss.class_targets:
        return y.long()
    if n_classes == 2:
        return y.float().unsqueeze(-1)
    return torch.nn.functional.one_hot(y.long(), n_classes).float()


def predictions(out: Tensor, head: str) -> Tensor:
    if out.shape[-1] == 1:
        return (out[..., 0] > (0.0 if head == "none" else 0.5)).long()
    return out.argmax(dim=-1)


def architecture(st: StudyTrain, n_in: int, n_classes: int, loss: str, normalize: str) -> dict:
    """Everything needed to rebuild a model: the arguments of ``StackedMLP`` / ``build_module``."""
    return {
        "sizes": [n_in, *st.model.hidden, n_outputs(n_classes)],
        "activation": st.model.activation,
        "dropout": st.model.dropout,
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


def _evaluate(model: StackedMLP, x: Tensor, y: Tensor, loss: Loss, n_classes: int):
    model.eval()
    with torch.no_grad():
        out = model(x)
        t = targets(y, loss, n_classes)
        t = t.expand(out.shape[0], *t.shape) if loss.class_targets else t.expand_as(out)
        losses = loss.fn(out, t)
        acc = (predictions(out, model.head) == y.unsqueeze(0)).float().mean(dim=1)
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
) -> list[Result]:
    """Train the models of one group together; return one ``Result`` per variant, in order."""
    v0 = group[0]
    loss = LOSSES[v0.loss]
    x, y = data["x_train"], data["y_train"]
    n = len(x)
    arch = architecture(st, x.shape[1], n_classes, v0.loss, v0.normalize)
    M = len(group)
    model = StackedMLP(M, **arch).to(device)
    # Each model draws its initial weights, then its dropout masks, from its own stream.
    gens = [torch.Generator(device).manual_seed(v.seed) for v in group]
    model.initialise([inits[v.init] for v in group], gens)
    lr = torch.tensor([v.lr for v in group], dtype=torch.float32, device=device)
    opt = make_optimizer(st.optimizer, list(model.parameters()), lr)
    bs = st.batch_size or n
    order_gen = torch.Generator().manual_seed(v0.seed)
    steps_per_epoch = (n + bs - 1) // bs
    y_all = targets(y, loss, n_classes)
    step_loss = torch.full((st.epochs * steps_per_epoch, M), float("nan"))
    val_loss = torch.full((st.epochs, M), float("nan"))
    val_acc = torch.full((st.epochs, M), float("nan"))
    diverged_at = torch.full((M,), -1, dtype=torch.long)
    alive = torch.ones(M, dtype=torch.bool)
    # Long full-batch runs (10,000 epochs) are validated at a stride: ~1,000 points per curve.
    val_every = max(1, st.epochs // 1000)
    step = 0
    model.train()
    for epoch in range(st.epochs):
        order = torch.randperm(n, generator=order_gen) if st.shuffle and bs < n else None
        for start in range(0, n, bs):
            if order is None:
                xb, tb = x[start : start + bs], y_all[start : start + bs]
            else:
                idx = order[start : start + bs].to(device)
                xb, tb = x[idx], y_all[idx]
            out = model(xb, gens)
            t = tb.expand(M, *tb.shape) if loss.class_targets else tb.expand_as(out)
            losses = loss.fn(out, t)
            opt.zero_grad()
            losses.sum().backward()
            opt.step()
            step_loss[step] = losses.detach()
            step += 1
        finite = torch.isfinite(step_loss[step - steps_per_epoch : step])
        bad = alive & ~finite.all(dim=0)
        if bad.any():  # a diverged model stops at its first non-finite loss; the others go on
            first = (~finite).float().argmax(dim=0) + step - steps_per_epoch
            diverged_at[bad] = first[bad]
            alive &= ~bad
        if (epoch + 1) % val_every == 0 or epoch == st.epochs - 1:
            vl, va = _evaluate(model, data["x_val"], data["y_val"], loss, n_classes)
            val_loss[epoch], val_acc[epoch] = vl.cpu(), va.cpu()
        if progress is not None:
            progress.update(M)
        if not alive.any():
            break
    tl, ta = _evaluate(model, x, y, loss, n_classes)
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
        results.append(
            Result(v, model.to_module(m), arch, sl, val_loss[:, m].numpy(),
                   val_acc[:, m].numpy(), final)  # fmt: skip
        )
    return results


def group_key(v: Variant, st: StudyTrain, n_train: int) -> tuple:
    shuffled = st.shuffle and (st.batch_size or n_train) < n_train
    return (v.reproduce, v.loss, v.normalize, v.seed if shuffled else None)


def load_study_data(study: str, normalize: str, paths: Paths, device: str, all_data: bool):
    from initlab.data import load_split

    data = {}
    for split in ("train", "val"):
        data[f"x_{split}"], data[f"y_{split}"] = load_split(study, split, normalize, paths, device)
    if all_data:  # the seed's own run: every point for training (and so no held-out test)
        x_test, y_test = load_split(study, "test", normalize, paths, device)
        data["x_train"] = torch.cat([data["x_train"], data["x_val"], x_test])
        data["y_train"] = torch.cat([data["y_train"], data["y_val"], y_test])
    return data


def train_study(
    params: Params, study: str, paths: Paths, device: str = "cpu", show_progress: bool | None = None
) -> list[Result]:
    """Train every variant of ``study``; returns results in ``variants()`` order."""
    from initlab.io import read_json

    st: StudyTrain = getattr(params.train, study)
    summary = read_json(paths.prepared(study).with_suffix(".json"))
    n_classes = summary["n_classes"]
    n_train = summary["sizes"]["train"]
    vs = variants(params, study)
    groups: dict[tuple, list[Variant]] = defaultdict(list)
    for v in vs:
        groups[group_key(v, st, n_train)].append(v)
    total = sum(len(g) * st.epochs for g in groups.values())  # model-epochs
    results: dict[Variant, Result] = {}
    cache: dict[tuple, dict] = {}
    disable = None if show_progress is None else not show_progress  # None: only on a terminal
    with tqdm(total=total, desc=f"train {study}", unit="model-epoch", disable=disable) as bar:
        for group in groups.values():
            v0 = group[0]
            all_data = v0.reproduce and bool(st.reproduce and st.reproduce.all_data)
            dkey = ("none" if v0.normalize == "batchnorm" else v0.normalize, all_data)
            if dkey not in cache:
                cache[dkey] = load_study_data(study, dkey[0], paths, device, all_data)
            t0 = time.perf_counter()
            out = train_group(st, group, params.inits, cache[dkey], n_classes, device, bar)
            seconds = (time.perf_counter() - t0) / len(group)
            for r in out:
                r.final["train_seconds"] = seconds
                results[r.variant] = r
    return [results[v] for v in vs]


def save_results(results: list[Result], out: Path) -> None:
    """Weights (one state_dict per run), curves and a runs table, into the folder ``out``."""
    import pandas as pd

    (out / "weights").mkdir(parents=True)
    rows, curves = [], {}
    for r in results:
        v = r.variant
        torch.save(r.module.state_dict(), out / "weights" / f"{v.run_name}.pt")
        curves[f"{v.run_name}/step_loss"] = r.step_loss.astype(np.float32)
        curves[f"{v.run_name}/val_loss"] = r.val_loss.astype(np.float32)
        curves[f"{v.run_name}/val_acc"] = r.val_acc.astype(np.float32)
        rows.append({
            "run_name": v.run_name, "variant": v.name, "init": v.init, "loss": v.loss,
            "normalize": v.normalize, "lr": v.lr, "seed": v.seed, "reproduce": v.reproduce,
            **r.final, "arch": json.dumps(r.arch),
        })  # fmt: skip
    np.savez(out / "curves.npz", **curves)
    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
