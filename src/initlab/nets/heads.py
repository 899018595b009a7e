"""A model's outputs and labels in the form each loss wants: the head, the targets, the predicted class."""

from __future__ import annotations

import torch
from torch import Tensor

from initlab.nets.registry import LOSSES, Loss


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
