"""SGD and Adam for stacked models, with one learning rate per model.

Same update rules as ``torch.optim.SGD`` (no momentum) and ``torch.optim.Adam`` (defaults,
Kingma & Ba 2015), written for parameters whose first axis is the model, so models with
different learning rates still train in one stack. torch's Adam keeps its step count as a tensor
and pays several small copies per parameter per step; for the tiny full-batch studies that
overhead was most of the run time (0.68 ms of 4.4 ms per step at M = 3).
``tests/test_optim.py`` checks both against torch's own optimisers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class StackedOptimizer:
    def __init__(self, params: list[Tensor], lr: Tensor) -> None:
        self.params = list(params)
        self.lr = lr  # (M,)
        self._lr = [lr.view(-1, *([1] * (p.dim() - 1))).to(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


class StackedSGD(StackedOptimizer):
    """p <- p - lr * g."""

    @torch.no_grad()
    def step(self) -> None:
        for p, lr in zip(self.params, self._lr):
            if p.grad is not None:
                p.sub_(p.grad * lr)


class StackedAdam(StackedOptimizer):
    """m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    def __init__(
        self, params: list[Tensor], lr: Tensor, betas=(0.9, 0.999), eps: float = 1e-8
    ) -> None:
        super().__init__(params, lr)
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        bc1 = 1 - self.b1**self.t
        bc2_sqrt = math.sqrt(1 - self.b2**self.t)
        for p, lr, m, v in zip(self.params, self._lr, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            p.sub_((lr / bc1) * m / denom)


def make_optimizer(name: str, params: list[Tensor], lr: Tensor) -> StackedOptimizer:
    return StackedSGD(params, lr) if name == "sgd" else StackedAdam(params, lr)
