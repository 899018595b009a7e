"""SGD and Adam for stacked models, with one learning rate per model.

Parameters are stacked ``(M, ...)`` tensors whose first axis is the model. Models that share a
learning rate sit in contiguous blocks (``train_study`` orders each group by learning rate), and
each block is one view per parameter, so a step is one fused kernel per block:
``torch.optim.adam.adam(..., fused=True)`` for Adam, whose single pass over p, g, m and v is
what makes the Fashion-MNIST step memory-bound rather than allocation-bound. The update rules are
torch's own (``torch.optim.SGD`` without momentum, ``torch.optim.Adam`` with its defaults;
Kingma & Ba 2015); ``tests/test_train.py`` checks both against torch's optimisers.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.adam import adam


def lr_blocks(lr: Tensor) -> list[tuple[int, int, float]]:
    """Runs of equal learning rate: ``[(start, stop, lr), ...]`` covering ``0..M``."""
    values = lr.tolist()
    blocks, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            blocks.append((start, i, values[start]))
            start = i
    return blocks


class StackedOptimizer:
    def __init__(self, params: list[Tensor], lr: Tensor) -> None:
        self.params = list(params)
        self.blocks = lr_blocks(lr)  # lr: (M,), one per model

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _views(self, tensors: list[Tensor], a: int, b: int) -> list[Tensor]:
        if len(self.blocks) == 1:
            return tensors
        return [t[a:b] for t in tensors]


class StackedSGD(StackedOptimizer):
    """p <- p - lr * g."""

    @torch.no_grad()
    def step(self) -> None:
        params = [p for p in self.params if p.grad is not None]
        for a, b, lr in self.blocks:
            ps = self._views(params, a, b)
            gs = self._views([p.grad for p in params], a, b)
            torch._foreach_add_(ps, gs, alpha=-lr)


class StackedAdam(StackedOptimizer):
    """m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    def __init__(self, params: list[Tensor], lr: Tensor, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, lr)
        self.b1, self.b2 = betas
        self.eps = eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        # One step counter per block and parameter, as torch keeps one per parameter.
        self.steps = [
            [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params] for _ in self.blocks
        ]
        self._mv = [(self._views(self.m, a, b), self._views(self.v, a, b)) for a, b, _ in self.blocks]
        fused_ok = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
        self.fused = fused_ok or None

    @torch.no_grad()
    def step(self) -> None:
        if any(p.grad is None for p in self.params):
            raise RuntimeError("StackedAdam.step: every parameter needs a gradient")
        grads = [p.grad for p in self.params]
        for (a, b, lr), (ms, vs), steps in zip(self.blocks, self._mv, self.steps):
            adam(
                self._views(self.params, a, b),
                self._views(grads, a, b),
                ms,
                vs,
                [],
                steps,
                fused=self.fused,
                amsgrad=False,
                beta1=self.b1,
                beta2=self.b2,
                lr=lr,
                weight_decay=0.0,
                eps=self.eps,
                maximize=False,
            )


def make_optimizer(name: str, params: list[Tensor], lr: Tensor) -> StackedOptimizer:
    return StackedSGD(params, lr) if name == "sgd" else StackedAdam(params, lr)
