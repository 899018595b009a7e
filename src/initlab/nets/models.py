"""MLPs for every study, M of them stacked so one process trains a whole group at once.

``StackedMLP`` holds the weights of M same-shaped models as ``(M, in, out)`` tensors: each model's
``nn.Linear`` weight transposed, so a layer is one batched matmul ``h @ W`` over all models with
each model's weight read row by row, as MKL's no-transpose kernels stream it best (a thin batch
of 100 against weights that step's optimiser update has pushed out of cache). A narrow layer
(fewer than ``NARROW`` outputs, such as the 10 logits) keeps ``nn.Linear``'s ``(M, out, in)`` and
is computed transposed, ``(W @ h.T).T``: a GEMM 10 columns wide runs far below the rate of one
100 wide (README, "How it trains"). Models never mix:
each has its own initialiser draws, loss and dropout masks (its seed's stream:
``DropoutStreams``), and ``to_module(m)`` gives model m back as a plain ``nn.Sequential`` (what
MLflow stores).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from initlab.nets.registry import init_linear
from initlab.params.schema import InitSpec

ACTIVATIONS = {"relu": (F.relu, nn.ReLU), "sigmoid": (torch.sigmoid, nn.Sigmoid), "tanh": (torch.tanh, nn.Tanh)}


def apply_head(h: Tensor, head: str) -> Tensor:
    """``"sigmoid"``, ``"softmax"`` (last axis) or ``"none"`` (logits) on the last layer."""
    if head == "sigmoid":
        return torch.sigmoid(h)
    if head == "softmax":
        return torch.softmax(h, dim=-1)
    return h


NARROW = 32  # layers with fewer outputs are stored (M, out, in) and computed transposed


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
        # Model m's nn.Linear weight is weights[k][m].T, or weights[k][m] for a narrow layer.
        self.narrow = [o < NARROW for o in sizes[1:]]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(n_models, o, i) if narrow else torch.empty(n_models, i, o))
            for i, o, narrow in zip(sizes[:-1], sizes[1:], self.narrow)
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
            for k, (i, o) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
                weight = torch.empty(o, i, device=self.weights[k].device)  # nn.Linear's (out, in)
                init_linear(weight, self.biases[k].data[m], spec.name, spec.args, spec.bias, gen)
                self.weights[k].data[m].copy_(weight if self.narrow[k] else weight.T)

    def forward(
        self, x: Tensor, dropout: DropoutStreams | None = None, record: list | None = None, upto: int | None = None
    ) -> Tensor:
        """``x``: ``(B, in)`` shared by all models, or ``(M, B, in)``. Returns ``(M, B, out)``.

        Training with dropout needs ``dropout``, the models' mask streams. ``record``, a list,
        receives ``(pre_activation, activation)`` of each layer (activation ``None`` for the last);
        ``upto=k`` stops after layer k's pre-activation and returns it."""
        M = self.n_models
        h = x
        if self.batchnorm_input:
            h = self._batchnorm(h)
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            if h.dim() == 2:  # shared input: every model reads the same batch (no copy)
                h = h.unsqueeze(0).expand(M, *h.shape)
            if self.narrow[k]:  # (W h^T)^T: the GEMM is as wide as the batch
                h = torch.baddbmm(b.unsqueeze(2), w, h.transpose(1, 2)).transpose(1, 2)
            else:
                h = torch.baddbmm(b.unsqueeze(1), h, w)
            if k == upto:
                return h
            pre = h
            if k < last:
                h = ACTIVATIONS[self.activation][0](h)
                if record is not None:
                    record.append((pre, h))
                if self.training and self.dropout > 0:
                    if dropout is None:
                        raise ValueError("training with dropout needs the models' DropoutStreams")
                    h = h * dropout.mask(h.shape[1:], self.dropout)
            elif record is not None:
                record.append((pre, None))
        return apply_head(h, self.head)

    @torch.no_grad()
    def lsuv(self, x: Tensor, models: list[int], tol: list[float], max_rounds: list[int]) -> list[int]:
        """LSUV's data step (Mishkin & Matas 2016, ``initlab.nets.registry.lsuv``) for ``models``:
        first layer to last, divide the layer's weight by the standard deviation of its output on
        ``x`` until it is within ``tol`` of 1, at most ``max_rounds`` rounds (per model). Runs in
        eval mode (no dropout); returns each model's rounds, summed over layers."""
        was = self.training
        self.eval()
        idx = torch.tensor(models, device=self.weights[0].device)
        tol_t = torch.tensor(tol, device=idx.device)
        limit = torch.tensor(max_rounds, device=idx.device)
        total = torch.zeros(len(models), dtype=torch.long, device=idx.device)
        for k, w in enumerate(self.weights):
            rounds = torch.zeros(len(models), dtype=torch.long, device=idx.device)
            while True:
                pre = self(x, upto=k).index_select(0, idx)
                std = pre.flatten(1).std(dim=1)
                todo = ((std - 1).abs() > tol_t) & (rounds < limit) & torch.isfinite(std) & (std > 0)
                if not todo.any():
                    break
                scale = torch.where(todo, 1.0 / std, torch.ones_like(std))
                w.data[idx] = w.data[idx] * scale.view(-1, 1, 1)
                rounds += todo.long()
            total += rounds
        self.train(was)
        return total.tolist()

    def _batchnorm(self, x: Tensor) -> Tensor:
        # BatchNorm1d over each model's own channels: fold models into the channel axis.
        M, n_in = self.n_models, self.sizes[0]
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(M, *x.shape)
        B = x.shape[1]
        flat = x.transpose(0, 1).reshape(B, M * n_in)
        y = F.batch_norm(
            flat,
            self.bn_mean.view(-1),
            self.bn_var.view(-1),
            self.bn_weight.view(-1),
            self.bn_bias.view(-1),
            training=self.training,
            momentum=0.1,
            eps=1e-5,
        )
        return y.view(B, M, n_in).transpose(0, 1)

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
            lin = nn.Linear(self.sizes[k], self.sizes[k + 1], device="meta").to_empty(device="cpu")
            with torch.no_grad():
                lin.weight.copy_(w[m] if self.narrow[k] else w[m].T)
                lin.bias.copy_(b[m])
            layers.append(lin)
            if k < last:
                layers.append(ACTIVATIONS[self.activation][1]())
                if self.dropout > 0:
                    layers.append(nn.Dropout(self.dropout))
        layers.append({"sigmoid": nn.Sigmoid(), "softmax": nn.Softmax(dim=-1)}.get(head, nn.Identity()))
        return nn.Sequential(*layers).eval()


DROPOUT_STREAM = 0xD20  # mixed with a run's seed: its dropout stream, apart from its init draws


class DropoutStreams:
    """Dropout masks for M stacked models, one stream per seed.

    A model's masks come from a generator seeded by its run's seed alone (mixed with
    ``DROPOUT_STREAM`` by NumPy's ``SeedSequence``, so the stream is not the one its initial
    weights were drawn from). A model trained alone draws the same masks, step by step, and
    models of one seed that differ by initialiser or loss see the same masks: the comparison
    varies what the study varies and nothing else. The stack draws each seed's mask once per
    layer and step and broadcasts it to that seed's models: a Fashion-MNIST group of 28 models
    shares seed 0, so one draw serves 28 instead of 28 draws.

    Masks follow ``nn.Dropout``: keep a unit with probability ``1 - p`` (``rand < 1 - p``, exact
    to 2^-24), scale kept units by ``1 / (1 - p)``.
    """

    def __init__(self, seeds: list[int], device="cpu") -> None:
        unique = list(dict.fromkeys(seeds))
        self.generators = [torch.Generator(device).manual_seed(dropout_seed(s)) for s in unique]
        index = [unique.index(s) for s in seeds]
        self.index = None if len(unique) == 1 else torch.tensor(index, device=device)
        self.device = device

    def mask(self, shape: tuple[int, ...], p: float) -> Tensor:
        """The next ``(M, *shape)`` mask (``(1, *shape)`` when all models share a seed)."""
        keep = 1.0 - p
        masks = torch.empty(len(self.generators), *shape, device=self.device)
        for u, g in enumerate(self.generators):
            masks[u].uniform_(generator=g)
        masks = masks.lt_(keep).mul_(1.0 / keep)
        return masks if self.index is None else masks.index_select(0, self.index)


def dropout_seed(seed: int) -> int:
    """The seed of run ``seed``'s dropout stream: 64 bits from ``SeedSequence([seed, 0xD20])``."""
    state = np.random.SeedSequence([seed % 2**64, DROPOUT_STREAM]).generate_state(2, np.uint32)
    return int(state[0]) | int(state[1]) << 32


def build_module(
    sizes: list[int], activation: str, dropout: float, batchnorm_input: bool, head: str
) -> nn.Sequential:
    """An empty standalone model of the given shape, to load saved weights into."""
    return StackedMLP(1, sizes, activation, dropout, batchnorm_input, head).to_module(0)
