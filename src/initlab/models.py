"""MLPs for every study, M of them stacked so one process trains a whole group at once.

``StackedMLP`` holds the weights of M same-shaped models as ``(M, in, out)`` tensors: each model's
``nn.Linear`` weight transposed, so a layer is one batched matmul ``h @ W`` over all models with
each model's weight read row by row, as MKL's no-transpose kernels stream it best (a thin batch
of 100 against weights that step's optimiser update has pushed out of cache). Models never mix:
each has its own initialiser draws, dropout stream and loss, and ``to_module(m)`` gives model m
back as a plain ``nn.Sequential`` (what MLflow stores).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from initlab.config import InitSpec
from initlab.registry import init_linear

ACTIVATIONS = {"relu": (F.relu, nn.ReLU), "sigmoid": (torch.sigmoid, nn.Sigmoid),
               "tanh": (torch.tanh, nn.Tanh)}  # fmt: skip


def apply_head(h: Tensor, head: str) -> Tensor:
    """``"sigmoid"``, ``"softmax"`` (last axis) or ``"none"`` (logits) on the last layer."""
    if head == "sigmoid":
        return torch.sigmoid(h)
    if head == "softmax":
        return torch.softmax(h, dim=-1)
    return h


class StackedMLP(nn.Module):
    """M MLPs ``sizes[0] -> ... -> sizes[-1]`` with optional BatchNorm1d input layer (seed 002)."""

    def __init__(
        self,
        n_models: int,
        sizes: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batchnorm_input: bool = False,
        head: str = "none",  # "sigmoid" | "softmax" | "none" (logits)
    ) -> None:
        super().__init__()
        self.n_models, self.sizes = n_models, list(sizes)
        self.activation, self.dropout, self.head = activation, dropout, head
        self.batchnorm_input = batchnorm_input
        self.weights = nn.ParameterList(  # model m's nn.Linear weight is weights[k][m].T
            nn.Parameter(torch.empty(n_models, i, o)) for i, o in zip(sizes[:-1], sizes[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(n_models, o)) for o in sizes[1:])
        if batchnorm_input:
            self.bn_weight = nn.Parameter(torch.ones(n_models, sizes[0]))
            self.bn_bias = nn.Parameter(torch.zeros(n_models, sizes[0]))
            self.register_buffer("bn_mean", torch.zeros(n_models, sizes[0]))
            self.register_buffer("bn_var", torch.ones(n_models, sizes[0]))

    def initialise(self, specs: list[InitSpec], generators: list[torch.Generator]) -> None:
        """Model m's layers, first to last, drawn by ``specs[m]`` from ``generators[m]``."""
        for m, (spec, gen) in enumerate(zip(specs, generators, strict=True)):
            for w, b in zip(self.weights, self.biases):
                weight = torch.empty(w.shape[2], w.shape[1], device=w.device)  # nn.Linear's (out, in)
                init_linear(weight, b.data[m], spec.name, spec.args, spec.bias, gen)
                w.data[m].copy_(weight.T)

    def forward(self, x: Tensor, dropout_generators: list[torch.Generator] | None = None) -> Tensor:
        """``x``: ``(B, in)`` shared by all models, or ``(M, B, in)``. Returns ``(M, B, out)``."""
        M = self.n_models
        h = x
        if self.batchnorm_input:
            h = self._batchnorm(h)
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            if h.dim() == 2:  # shared input: every model reads the same batch (no copy)
                h = h.unsqueeze(0).expand(M, *h.shape)
            h = torch.baddbmm(b.unsqueeze(1), h, w)
            if k < last:
                h = ACTIVATIONS[self.activation][0](h)
                if self.training and self.dropout > 0:
                    h = h * self._dropout_mask(h.shape, dropout_generators, h.device)
        return apply_head(h, self.head)

    def _batchnorm(self, x: Tensor) -> Tensor:
        # BatchNorm1d over each model's own channels: fold models into the channel axis.
        M, n_in = self.n_models, self.sizes[0]
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(M, *x.shape)
        B = x.shape[1]
        flat = x.transpose(0, 1).reshape(B, M * n_in)
        y = F.batch_norm(
            flat, self.bn_mean.view(-1), self.bn_var.view(-1), self.bn_weight.view(-1),
            self.bn_bias.view(-1), training=self.training, momentum=0.1, eps=1e-5,
        )  # fmt: skip
        return y.view(B, M, n_in).transpose(0, 1)

    def _dropout_mask(self, shape, generators, device) -> Tensor:
        """Keep each unit with probability 1 - p, scaled by 1 / (1 - p), as ``nn.Dropout``.

        Each model draws its own mask from its own generator, as if trained alone. ``rand < keep``
        (exact to 2^-24) is drawn per model in one call; ``bernoulli_(keep)`` costs twice as much
        per element on CPU, about 5 ms of a 45 ms Fashion-MNIST step of 14 models.
        """
        keep = 1.0 - self.dropout
        if generators is None:
            raise ValueError("training with dropout needs one generator per model")
        mask = torch.empty(shape, device=device)
        for m, g in enumerate(generators):
            mask[m].uniform_(generator=g)
        return mask.lt_(keep).mul_(1.0 / keep)

    def to_module(self, m: int, head: str | None = None) -> nn.Sequential:
        """Model ``m`` as a standalone ``nn.Sequential`` with the same weights and buffers,
        ending in ``head`` (default: the stack's)."""
        head = self.head if head is None else head
        layers: list[nn.Module] = []
        if self.batchnorm_input:
            bn = nn.BatchNorm1d(self.sizes[0])
            with torch.no_grad():
                bn.weight.copy_(self.bn_weight[m])
                bn.bias.copy_(self.bn_bias[m])
                bn.running_mean.copy_(self.bn_mean[m])
                bn.running_var.copy_(self.bn_var[m])
            layers.append(bn)
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            lin = nn.Linear(w.shape[1], w.shape[2], device="meta").to_empty(device="cpu")
            with torch.no_grad():
                lin.weight.copy_(w[m].T)
                lin.bias.copy_(b[m])
            layers.append(lin)
            if k < last:
                layers.append(ACTIVATIONS[self.activation][1]())
                if self.dropout > 0:
                    layers.append(nn.Dropout(self.dropout))
        layers.append({"sigmoid": nn.Sigmoid(), "softmax": nn.Softmax(dim=-1)}.get(
            head, nn.Identity()))  # fmt: skip
        return nn.Sequential(*layers).eval()


def build_module(
    sizes: list[int], activation: str, dropout: float, batchnorm_input: bool, head: str
) -> nn.Sequential:
    """An empty standalone model of the given shape, to load saved weights into."""
    return StackedMLP(1, sizes, activation, dropout, batchnorm_input, head).to_module(0)
