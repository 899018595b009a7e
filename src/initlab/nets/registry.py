"""Initialisers and losses by name: the catalogue of seed 003, each with its formula and source.

A variant in ``params.yaml`` names an entry here plus its arguments; nothing about a variant
is code. Initialisers fill a Linear weight of shape ``(fan_out, fan_in)`` in place and draw
from the ``generator`` they are given, so every model keeps its own random stream.
Losses take a stack of ``M`` models' outputs ``(M, B, C)`` and return one mean loss per model
``(M,)``, so summing them trains every model on exactly its own loss.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from annotated_types import Ge, Gt, Le

# An initialiser's keyword arguments are checked against these annotations (``initlab.params.schema``).
Mode = Literal["fan_in", "fan_out"]
Nonlinearity = Literal["linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu"]  # torch's calculate_gain


class _Lazy:
    """A module imported at its first use. ``initlab.params.schema`` checks params against this
    registry's names in every stage, and the stages that never train need not load torch."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import Tensor, nn
else:
    torch, nn, F = _Lazy("torch"), _Lazy("torch.nn"), _Lazy("torch.nn.functional")

InitFn = Callable[..., "Tensor"]


def fans(weight: Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a Linear weight ``(fan_out, fan_in)``; written once, as in torch."""
    return nn.init._calculate_fan_in_and_fan_out(weight)


# --------------------------------------------------------------------------- initialisers


def zeros(w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """w = 0. Every unit computes the same thing and gets the same gradient (seed 001, 003)."""
    return nn.init.zeros_(w)


def ones(w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """w = 1. Symmetric like zeros, and activations grow with fan-in (seed 001, 003)."""
    return nn.init.ones_(w)


def constant(w: Tensor, generator: torch.Generator | None = None, *, val: float = 0.77) -> Tensor:
    """w = val; seed 003's example uses val = 0.77, seed 000's bad start val = -5."""
    return nn.init.constant_(w, val)


def uniform(w: Tensor, generator: torch.Generator | None = None, *, a: float = 0.0, b: float = 1.0) -> Tensor:
    """w ~ U(a, b); seed 001 tries U(0, 1) and U(-0.5, 0.5)."""
    return nn.init.uniform_(w, a, b, generator=generator)


def normal(
    w: Tensor, generator: torch.Generator | None = None, *, mean: float = 0.0, std: Annotated[float, Ge(0)] = 1.0
) -> Tensor:
    """w ~ N(mean, std^2) (seed 003)."""
    return nn.init.normal_(w, mean, std, generator=generator)


def uniform_rule(w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """w ~ U(-y, y), y = 1/sqrt(n), n = fan_in: seed 001's "general rule"."""
    y = 1.0 / math.sqrt(fans(w)[0])
    return nn.init.uniform_(w, -y, y, generator=generator)


def normal_rule(w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """w ~ N(0, y^2), y = 1/sqrt(n), n = fan_in: seed 001's normal version of the rule."""
    return nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fans(w)[0]), generator=generator)


def xavier_uniform(
    w: Tensor, generator: torch.Generator | None = None, *, gain: Annotated[float, Gt(0)] = 1.0
) -> Tensor:
    """w ~ U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)).

    Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural
    networks", AISTATS 2010.
    """
    return nn.init.xavier_uniform_(w, gain=gain, generator=generator)


def xavier_normal(
    w: Tensor, generator: torch.Generator | None = None, *, gain: Annotated[float, Gt(0)] = 1.0
) -> Tensor:
    """w ~ N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    return nn.init.xavier_normal_(w, gain=gain, generator=generator)


def kaiming_uniform(
    w: Tensor,
    generator: torch.Generator | None = None,
    *,
    mode: Mode = "fan_in",
    nonlinearity: Nonlinearity = "relu",
    a: float = 0.0,
) -> Tensor:
    """w ~ U(-bound, bound), bound = gain * sqrt(3 / fan_mode), gain = calculate_gain(nonlinearity, a).

    He et al., "Delving deep into rectifiers", ICCV 2015.
    """
    return nn.init.kaiming_uniform_(w, a=a, mode=mode, nonlinearity=nonlinearity, generator=generator)


def kaiming_normal(
    w: Tensor,
    generator: torch.Generator | None = None,
    *,
    mode: Mode = "fan_in",
    nonlinearity: Nonlinearity = "relu",
    a: float = 0.0,
) -> Tensor:
    """w ~ N(0, std^2), std = gain / sqrt(fan_mode) (He et al. 2015)."""
    return nn.init.kaiming_normal_(w, a=a, mode=mode, nonlinearity=nonlinearity, generator=generator)


def default(w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """PyTorch's nn.Linear default: kaiming_uniform with a = sqrt(5), i.e. w ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Its bias is drawn from the same U(-1/sqrt(fan_in), 1/sqrt(fan_in)), see ``init_linear``.
    """
    return nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)


def lecun_normal(w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """w ~ N(0, 1/fan_in): unit output variance for a linear unit on unit-variance inputs.

    LeCun, Bottou, Orr & Müller, "Efficient BackProp", 1998 (section 4.6); also the init of SELU
    networks (Klambauer et al. 2017). kaiming_normal with gain 1.
    """
    return nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fans(w)[0]), generator=generator)


def large_random(
    w: Tensor, generator: torch.Generator | None = None, *, scale: Annotated[float, Gt(0)] = 10.0
) -> Tensor:
    """w ~ scale * N(0, 1), scale = 10: the "large random" start of deeplearning.ai's
    initialisation exercise (``np.random.randn(n_l, n_{l-1}) * 10``), which saturates the sigmoid
    output at once: its loss starts near infinity and training crawls."""
    return nn.init.normal_(w, 0.0, scale, generator=generator)


def orthogonal(
    w: Tensor, generator: torch.Generator | None = None, *, gain: Annotated[float, Gt(0)] = 1.0
) -> Tensor:
    """w = gain * Q, Q the orthogonal factor of a QR decomposition of a N(0, 1) matrix (signs
    fixed by R's diagonal), so its rows (or columns, whichever are fewer) are orthonormal: every
    singular value is ``gain`` and a deep linear net keeps the norm of its signal.

    Saxe, McClelland & Ganguli, "Exact solutions to the nonlinear dynamics of learning in deep
    linear neural networks", ICLR 2014 (``torch.nn.init.orthogonal_``).
    """
    return nn.init.orthogonal_(w, gain=gain, generator=generator)


def lsuv(
    w: Tensor,
    generator: torch.Generator | None = None,
    *,
    tol: Annotated[float, Gt(0)] = 0.1,
    max_rounds: Annotated[int, Gt(0), Le(1000)] = 10,
) -> Tensor:
    """Layer-sequential unit variance: an orthonormal start (``orthogonal``, gain 1), then, first
    layer to last, the layer's weight divided by the standard deviation of its output (the
    pre-activation) on one batch of training data, until that is within ``tol`` of 1 or after
    ``max_rounds`` rounds. Biases are not changed (zeros unless given).

    Mishkin & Matas, "All you need is a good init", ICLR 2016, algorithm 1; tolerance and rounds
    as in the authors' reference code (``LSUVinit``: ``std_tol=0.1``, ``max_attempts=10``). This
    function is the orthonormal start; the rescaling needs data and a forward pass through the
    layers below, and is ``initlab.nets.models.StackedMLP.lsuv`` (the train stage runs it).
    """
    return nn.init.orthogonal_(w, gain=1.0, generator=generator)


DATA_DEPENDENT = {"lsuv"}  # initialisers finished on data by the model (``StackedMLP.lsuv``)

INITIALIZERS: dict[str, InitFn] = {
    f.__name__: f
    for f in (
        zeros,
        ones,
        constant,
        uniform,
        normal,
        uniform_rule,
        normal_rule,
        xavier_uniform,
        xavier_normal,
        kaiming_uniform,
        kaiming_normal,
        default,
        lecun_normal,
        large_random,
        orthogonal,
        lsuv,
    )
}


def init_linear(
    weight: Tensor,
    bias: Tensor,
    name: str,
    args: dict | None = None,
    bias_init: str | float = "zeros",
    generator: torch.Generator | None = None,
) -> None:
    """Fill one Linear layer's weight and bias in place, weight first (nn.Linear's draw order).

    ``bias_init``: ``"zeros"``, ``"default"`` (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as nn.Linear)
    or a number. With ``name="default"`` and ``bias_init="default"`` the draws equal
    ``nn.Linear(fan_in, fan_out)`` built after ``torch.manual_seed`` on the same seed.
    """
    with torch.no_grad():
        INITIALIZERS[name](weight, generator, **(args or {}))
        if bias_init == "zeros":
            bias.zero_()
        elif bias_init == "default":
            bound = 1.0 / math.sqrt(fans(weight)[0])
            bias.uniform_(-bound, bound, generator=generator)
        else:
            bias.fill_(float(bias_init))


# --------------------------------------------------------------------------- losses


def _mean_per_model(x: Tensor) -> Tensor:
    return x.flatten(1).mean(dim=1)


def l1(output: Tensor, target: Tensor) -> Tensor:
    """L1 = mean |y - ŷ| (nn.L1Loss). Seed 003: y=[2, 5, 2.5], ŷ=[2.5, 5, 3] -> 0.3333."""
    return _mean_per_model(F.l1_loss(output, target, reduction="none"))


def mse(output: Tensor, target: Tensor) -> Tensor:
    """MSE = mean (y - ŷ)^2 (nn.MSELoss). Seed 003: y=[3, 5, 2.5], ŷ=[2.5, 5, 3] -> 0.1667."""
    return _mean_per_model(F.mse_loss(output, target, reduction="none"))


def bce(output: Tensor, target: Tensor) -> Tensor:
    """BCE = -mean[y log p + (1 - y) log(1 - p)] on probabilities p (nn.BCELoss; logs clamped at -100)."""
    return _mean_per_model(F.binary_cross_entropy(output, target, reduction="none"))


def bce_logits(output: Tensor, target: Tensor) -> Tensor:
    """BCE on logits z with p = sigmoid(z), computed stably (nn.BCEWithLogitsLoss, seed 002's advice)."""
    return _mean_per_model(F.binary_cross_entropy_with_logits(output, target, reduction="none"))


def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """CE = -mean_i log softmax(z_i)[y_i] = log-softmax + NLL (nn.CrossEntropyLoss).

    Seed 003: z=[[1.5, 2, 0.5], [0.5, 1, 1.5]], y=[1, 2] -> 0.6422. ``target`` holds class indices.
    """
    logp = output.log_softmax(dim=-1)
    picked = logp.gather(-1, target.long().unsqueeze(-1).expand(*logp.shape[:-1], 1))
    return -_mean_per_model(picked)


@dataclass(frozen=True)
class Loss:
    """A loss and what the model's head must give it."""

    fn: Callable[[Tensor, Tensor], Tensor]
    on_logits: bool  # False: the head applies sigmoid (binary) or softmax (multi-class) first
    class_targets: bool  # True: integer class targets; False: one-hot / {0, 1} floats
    # The numbers of classes it is meant for: a binary cross-entropy on three one-hot columns
    # trains three one-vs-rest models without a word; cross-entropy needs one output per class.
    min_classes: int = 2
    max_classes: int | None = None

    def classes_allowed(self) -> str:
        if self.max_classes == self.min_classes:
            return f"{self.min_classes} classes"
        return (
            f"{self.min_classes} classes or more"
            if self.max_classes is None
            else f"{self.min_classes} to {self.max_classes} classes"
        )


LOSSES: dict[str, Loss] = {
    "l1": Loss(l1, on_logits=False, class_targets=False),
    "mse": Loss(mse, on_logits=False, class_targets=False),
    "bce": Loss(bce, on_logits=False, class_targets=False, max_classes=2),
    "bce_logits": Loss(bce_logits, on_logits=True, class_targets=False, max_classes=2),
    "cross_entropy": Loss(cross_entropy, on_logits=True, class_targets=True, min_classes=3),
}
