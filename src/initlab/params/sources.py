"""Where a study's data comes from (``studies.<name>.data``: a line, an ECG, scikit-learn,
torchvision or a table) and how it is split (``studies.<name>.split``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
    model_validator,
)

from initlab.params.fields import (
    MAX_LINE_POINTS,
    Finite,
    Fraction,
    OneOf,
    PosFloat,
    PosInt,
    Seed,
    Strict,
)


class LineSource(Strict):
    """Seed 000's line: x = arange(start, stop, step) in float32, y = x > threshold; held-out
    points drawn from the same rule, sharing no x with the training points."""

    kind: Literal["line"]
    start: Finite = -2.0
    stop: Finite = 2.0
    step: PosFloat = 0.1
    threshold: Finite = 0.2
    holdout_points: Annotated[int, Field(gt=0, le=1_000_000)] = 200
    holdout_seed: Seed = 0

    @model_validator(mode="after")
    def _points_of_two_classes(self) -> LineSource:
        """Points x = start, start + step, ... below stop; some at most threshold, some above."""
        if not self.start < self.stop:
            raise ValueError(f"start = {self.start:g} is not below stop = {self.stop:g}; allowed: start < stop")
        n = math.ceil((self.stop - self.start) / self.step)  # torch.arange's length
        if not 2 <= n <= MAX_LINE_POINTS:
            raise ValueError(
                f"step = {self.step:g} gives {n:,} points from start {self.start:g} to stop "
                f"{self.stop:g}; allowed: a step giving 2 to {MAX_LINE_POINTS:,} points"
            )
        last = self.start + (n - 1) * self.step
        if not self.start <= self.threshold < last:
            raise ValueError(
                f"threshold = {self.threshold:g} puts every point from start = {self.start:g} to "
                f"stop = {self.stop:g} (the last x = {last:g}) in one class; allowed: from "
                f"{self.start:g} up to below {last:g}"
            )
        return self


class EcgSource(Strict):
    """Beat-to-beat heart rate from an ECG (SciPy's record), labelled bpm > threshold (seed 002)."""

    kind: Literal["ecg"]
    url: str = "https://raw.githubusercontent.com/scipy/dataset-ecg/main/ecg.dat"
    sampling_hz: Annotated[PosFloat, Field(le=100_000)] = 360.0  # an ECG is sampled at hundreds of Hz
    peak_distance: PosInt = 150  # samples between R-peaks at least (scipy's own ECG example)
    threshold_bpm: PosFloat | None = None  # None: the training split's median


class SklearnSource(Strict):
    """A scikit-learn generator by name (``make_circles``, ``make_moons``, ``make_classification``
    ...) called with ``args``: features x, class labels y."""

    kind: Literal["sklearn"]
    generator: Annotated[str, AfterValidator(OneOf("generator", lambda: SKLEARN_GENERATORS))]
    args: dict[str, Any] = {}
    # Held-out splits drawn by their own calls (args updated by these), as deeplearning.ai draws
    # its test set: then ``args`` gives the training rows alone, and ``split`` fractions are unused.
    val_args: dict[str, Any] | None = None
    test_args: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> SklearnSource:
        if (self.val_args is None) != (self.test_args is None):
            raise ValueError("val_args and test_args: give both (held-out splits drawn apart) or neither")
        return self


class TorchvisionSource(Strict):
    """An image-classification dataset of torchvision, its official train and test sets."""

    kind: Literal["torchvision"]
    dataset: Literal["FashionMNIST", "MNIST", "KMNIST", "CIFAR10"]
    url: str | None = None  # a mirror of the files; None: torchvision's own


class TableSource(Strict):
    """A local CSV or Parquet file: every column but ``target`` is a numeric feature. ``sha256``
    is the file's: DVC sees params, not the file, so a new file must come with its new hash."""

    kind: Literal["table"]
    path: Annotated[Path, Field(strict=False)]  # YAML gives a string
    target: str
    sha256: str | None = None  # None: the download stage stops and names the file's hash

    @field_validator("path")
    @classmethod
    def _readable(cls, v: Path) -> Path:
        if v.suffix.lower() not in (".csv", ".parquet"):
            raise ValueError(f"{str(v)!r} is not a .csv or .parquet file")
        return v


# scikit-learn's generators that return (x, y) for classification.
SKLEARN_GENERATORS = (
    "make_blobs",
    "make_circles",
    "make_classification",
    "make_gaussian_quantiles",
    "make_hastie_10_2",
    "make_moons",
)

DATA_KINDS = ("line", "ecg", "sklearn", "torchvision", "table")
Source = Annotated[
    LineSource | EcgSource | SklearnSource | TorchvisionSource | TableSource, Field(discriminator="kind")
]


class Split(Strict):
    """Seeded, stratified train / validation / test splits (a line's validation and test come from
    its held-out points; a torchvision dataset's test split is its official test set)."""

    seed: Seed = 0
    val_fraction: Fraction = 0.2
    test_fraction: Fraction = 0.2
    train_subset: PosInt | None = None  # the first N of the training split (the CI profile)
    test_subset: PosInt | None = None

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> Split:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction = "
                f"{self.val_fraction + self.test_fraction:g}; allowed: a sum below 1"
            )
        return self


# --------------------------------------------------------------------------- training
