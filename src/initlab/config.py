"""``params.yaml`` as a validated pydantic model, the paths every stage reads and writes, and variants.

Every number lives in ``params.yaml``; this module only says what is allowed. A bad value stops
the stage before it writes anything, with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from initlab.names import INITIALIZER_NAMES as INITIALIZERS
from initlab.names import LOSS_NAMES as LOSSES

STUDIES = ("line", "circles", "heart_rate", "fashion_mnist")
Study = Literal["line", "circles", "heart_rate", "fashion_mnist"]
NORMALIZATIONS = ("none", "zscore", "batchnorm")

PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class ParamsError(ValueError):
    """A bad ``params.yaml``: the message is the one line the user sees."""


# The stages' other known errors live here too, so that the CLI catches them without importing
# the modules that raise them (each stage's dvc.yaml deps are its import closure).
class DataError(RuntimeError):
    """Raw data missing, unreachable or corrupt: the message names the file and the fix."""


class StoreError(RuntimeError):
    """The MLflow store cannot be used: the message is the one line the user sees."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- data


class LineData(Strict):
    start: float = -2.0
    stop: float = 2.0
    step: PosFloat = 0.1
    threshold: float = 0.2
    holdout_points: PosInt = 200  # drawn from the same rule, sharing no x with the training set
    holdout_seed: int = 0


class CirclesData(Strict):
    n_samples: PosInt = 500
    noise: Annotated[float, Field(ge=0)] = 0.1
    factor: Fraction = 0.2
    random_state: int = 123


class Source(Strict):
    url: str


class DataParams(Strict):
    """The download stage: what raw data to generate (line, circles) or fetch (the others)."""

    line: LineData = LineData()
    circles: CirclesData = CirclesData()
    heart_rate: Source = Source(url="https://raw.githubusercontent.com/scipy/dataset-ecg/main/ecg.dat")
    fashion_mnist: Source = Source(url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")


class LinePrepare(Strict):
    val_fraction: Fraction = 0.5  # of the held-out points; the rest is the test split


class CirclesPrepare(Strict):
    val_fraction: Fraction = 0.2
    test_fraction: Fraction = 0.2


class HeartRatePrepare(Strict):
    sampling_hz: PosFloat = 360.0
    peak_distance: PosInt = 150  # samples between R-peaks at least (scipy's own ECG example)
    threshold_bpm: PosFloat | None = None  # None: the training split's median
    val_fraction: Fraction = 0.2
    test_fraction: Fraction = 0.2


class FashionMnistPrepare(Strict):
    val_fraction: Fraction = 0.2
    train_subset: PosInt | None = None  # CI profile: first N of the shuffled training split
    test_subset: PosInt | None = None


class PrepareParams(Strict):
    """The prepare stage: seeded splits (and the heart-rate features and labels)."""

    seed: int = 0
    line: LinePrepare = LinePrepare()
    circles: CirclesPrepare = CirclesPrepare()
    heart_rate: HeartRatePrepare = HeartRatePrepare()
    fashion_mnist: FashionMnistPrepare = FashionMnistPrepare()

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> PrepareParams:
        for name in ("circles", "heart_rate"):
            d = getattr(self, name)
            if d.val_fraction + d.test_fraction >= 1:
                raise ValueError(
                    f"prepare.{name}.val_fraction + test_fraction = "
                    f"{d.val_fraction + d.test_fraction:g}; allowed: a sum below 1"
                )
        return self


# --------------------------------------------------------------------------- training


class InitSpec(Strict):
    name: str
    args: dict[str, Any] = {}
    bias: float | Literal["zeros", "default"] = "zeros"

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in INITIALIZERS:
            raise ValueError(f"unknown initialiser {v!r}; allowed: {', '.join(INITIALIZERS)}")
        return v


class ModelSpec(Strict):
    hidden: list[PosInt] = []
    activation: Literal["relu", "sigmoid", "tanh"] = "relu"
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


class Reproduce(Strict):
    """The seed's own run: one seed, the whole training data, no held-out split."""

    seed: int
    init: str
    losses: list[str]
    all_data: bool = False  # True: train on train + validation + test, as the seed did


class StudyTrain(Strict):
    model: ModelSpec = ModelSpec()
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: list[PosFloat]
    batch_size: PosInt | None = None  # None: full batch
    shuffle: bool = True
    epochs: PosInt
    seeds: list[int] = Field(min_length=1)
    inits: list[str] = Field(min_length=1)
    losses: list[str] = Field(min_length=1)
    normalize: list[Literal["none", "zscore", "batchnorm"]] = ["none"]
    reproduce: Reproduce | None = None
    # After training, score each model on the whole training split (seed 000's and 002's
    # figures are training accuracies). Seed 001 reports validation only; one pass over 48k
    # images is ~0.1 s per model, about 8 % of its training.
    eval_train: bool = True
    # Score the validation split every this many epochs, and always after the last; null: about
    # 1,000 points per run (every epoch up to 1,000 epochs). Seed 001 validates once, after its
    # 2 epochs; per epoch, 12k images cost ~6 % of its training.
    val_every: PosInt | None = None

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in LOSSES:
                raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSSES)}")
        return v

    @field_validator("lr")
    @classmethod
    def _some_lr(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("empty list; allowed: one or more positive learning rates")
        return v


class TrainParams(Strict):
    device: str = "cpu"
    line: StudyTrain
    circles: StudyTrain
    heart_rate: StudyTrain
    fashion_mnist: StudyTrain


class TrackingParams(Strict):
    max_points_per_metric: PosInt = 1000
    log_models: bool = True


class ReportParams(Strict):
    first_batches: PosInt = 100


class Params(Strict):
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    inits: dict[str, InitSpec]
    train: TrainParams
    tracking: TrackingParams = TrackingParams()
    report: ReportParams = ReportParams()

    @model_validator(mode="after")
    def _inits_named(self) -> Params:
        for study in STUDIES:
            st: StudyTrain = getattr(self.train, study)
            named = list(st.inits) + ([st.reproduce.init] if st.reproduce else [])
            for label in named:
                if label not in self.inits:
                    raise ValueError(
                        f"train.{study}.inits: {label!r} is not in the inits catalogue; "
                        f"allowed: {', '.join(self.inits)}"
                    )
            if st.reproduce:
                for name in st.reproduce.losses:
                    if name not in LOSSES:
                        raise ValueError(
                            f"train.{study}.reproduce.losses: unknown loss {name!r}; "
                            f"allowed: {', '.join(LOSSES)}"
                        )
        return self


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    # Drop pydantic's union branch tags ("float", "literal['zeros','default']") from the key.
    loc = [str(p) for p in err["loc"]
           if str(p) not in ("float", "int", "str", "bool") and not str(p).startswith("literal[")]
    key = ".".join(loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"params.yaml: missing key {key}"
    if err["type"] == "extra_forbidden":
        return f"params.yaml: unknown key {key}; remove it or check its spelling"
    value = err.get("input")
    if isinstance(value, dict) or not key:  # a check across keys: its message names them
        return f"params.yaml: {msg}"
    if len(loc) < len(err["loc"]):  # a union: say every form allowed
        msg = "allowed: a number, 'zeros' or 'default'" if loc[-1] == "bias" else msg
    return f"params.yaml: {key} = {value!r}: {msg}"


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise ``ParamsError`` with one line on anything bad."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root or pass --params") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_first_error(exc).replace("params.yaml", str(path), 1)) from None


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One trained model: a point of the study's grid and a seed."""

    study: str
    init: str
    loss: str
    normalize: str
    lr: float
    seed: int
    reproduce: bool = False

    @property
    def name(self) -> str:
        base = f"{self.init}-{self.loss}-{self.normalize}-lr{self.lr:g}"
        return f"reproduce-{base}" if self.reproduce else base

    @property
    def run_name(self) -> str:
        return f"{self.name}-s{self.seed}"


def variants(params: Params, study: str) -> list[Variant]:
    """Every model of a study: inits x losses x normalisations x lrs x seeds, then the reproduction."""
    st: StudyTrain = getattr(params.train, study)
    out = [
        Variant(study, init, loss, norm, lr, seed)
        for init, loss, norm, lr, seed in itertools.product(
            st.inits, st.losses, st.normalize, st.lr, st.seeds
        )
    ]
    if st.reproduce:
        out += [
            Variant(study, st.reproduce.init, loss, "none", st.lr[0], st.reproduce.seed, True)
            for loss in st.reproduce.losses
        ]
    return out


# --------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class Paths:
    """Where every stage reads and writes, relative to the project root."""

    root: Path = Path(".")

    @property
    def pipeline(self) -> Path:
        return self.root / "pipeline"

    def raw(self, study: str) -> Path:
        return self.pipeline / "raw" / study

    def prepared(self, study: str) -> Path:
        return self.pipeline / "prepared" / f"{study}.npz"

    def norm_stats(self, study: str) -> Path:
        return self.pipeline / "normalize" / f"{study}.json"

    def trained(self, study: str) -> Path:
        return self.pipeline / "train" / study

    def metrics(self, study: str) -> Path:
        return self.pipeline / "metrics" / f"{study}.json"

    def evaluated(self, study: str) -> Path:
        return self.pipeline / "evaluate" / f"{study}.csv"

    @property
    def tracked(self) -> Path:
        return self.pipeline / "tracking.json"

    def timing(self, stage: str) -> Path:
        """Wall times of a stage (``train-<study>``, ``track``): beside the outputs, never one of
        them, so that outputs hash the same when they are the same (nothing depends on these)."""
        return self.pipeline / "timings" / f"{stage}.json"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


def data_mirror() -> Path | None:
    """The local folder named by ``INITLAB_DATA_MIRROR`` (layout: ``fashion-mnist/``, ``ecg/``)."""
    value = os.environ.get("INITLAB_DATA_MIRROR")
    return Path(value) if value else None
