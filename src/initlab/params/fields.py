"""The building blocks of the params schema: checked number types, names the registry knows,
and ``Strict``, the base model that refuses unknown keys."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
)

from initlab.nets.registry import INITIALIZERS, LOSSES

FLOAT32_MAX = 3.4028234663852886e38  # models compute in float32: a larger number becomes inf there
SEED_MAX = 2**32 - 1  # NumPy's and scikit-learn's seeds are 0 .. 2**32 - 1
MAX_LINE_POINTS = 10_000_000  # a line of more points is a typo, and would not fit in memory


def _float32(v: float) -> float:
    if abs(v) > FLOAT32_MAX:
        raise ValueError(f"allowed: a number of size at most {FLOAT32_MAX:.4g} (float32, the models' precision)")
    return v


# Every model below is strict (``Strict``): no bool where a number goes (YAML's ``true`` is not
# 1.0), no string where a number goes; an int is still accepted where a float goes.
Finite = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_float32)]  # .inf, .nan refused
PosFloat = Annotated[Finite, Field(gt=0)]
Fraction = Annotated[Finite, Field(gt=0, lt=1)]
PosInt = Annotated[int, Field(gt=0)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class OneOf:
    """The check of a name that must be a key of a registry (``LOSSES``, ``INITIALIZERS``...); the
    schema test finds it in a field's metadata and tries an unknown name there."""

    def __init__(self, what: str, names: Callable[[], Mapping | tuple]) -> None:
        self.what, self.names = what, names

    def __call__(self, v: str) -> str:
        if v not in self.names():
            raise ValueError(f"unknown {self.what} {v!r}; allowed: {', '.join(self.names())}")
        return v


LossName = Annotated[str, AfterValidator(OneOf("loss", lambda: LOSSES))]
InitName = Annotated[str, AfterValidator(OneOf("initialiser", lambda: INITIALIZERS))]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --------------------------------------------------------------------------- data
