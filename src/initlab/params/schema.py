"""The schema of ``params.yaml`` as pydantic models: each study's inits, models and training,
tracking and report (data sources: ``sources``; reading the file: ``load``; the report's words,
``report.yaml``: ``words``).

Every number lives in ``params.yaml``; this module only says what is allowed. A bad value stops
the stage before it writes anything, with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import re
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from initlab.errors import ParamsError
from initlab.nets.registry import INITIALIZERS
from initlab.params.fields import (
    Finite,
    InitName,
    LossName,
    PosFloat,
    PosInt,
    Seed,
    Strict,
)
from initlab.params.messages import first_error, first_message
from initlab.params.sources import (
    Source,
    Split,
)


def init_arg_types(name: str) -> dict[str, Any]:
    """The keywords initialiser ``name`` takes (after the weight and the generator) and their
    types, from its signature's annotations (a float is a ``Finite`` here)."""
    import inspect

    import initlab.nets.registry as registry

    out = {}
    for key, param in list(inspect.signature(INITIALIZERS[name]).parameters.items())[2:]:
        hint = eval(param.annotation, vars(registry)) if isinstance(param.annotation, str) else param.annotation  # noqa: S307 (the registry's own annotations)
        base, *meta = typing.get_args(hint) if typing.get_origin(hint) is Annotated else (hint,)
        out[key] = (Annotated[(Finite, *meta)] if meta else Finite) if base is float else hint  # float32, finite
    return out


class InitSpec(Strict):
    name: InitName
    args: dict[str, Any] = {}
    bias: Finite | Literal["zeros", "default"] = "zeros"

    @model_validator(mode="after")
    def _args_fit(self) -> InitSpec:
        """Keywords the initialiser takes, each of the type its signature gives (strictly)."""
        types = init_arg_types(self.name)
        for key, value in self.args.items():
            if key not in types:
                raise ValueError(
                    f"args: {self.name} takes no argument {key!r}; allowed: {', '.join(types) or 'none'}"
                )
            try:
                TypeAdapter(types[key], config=ConfigDict(strict=True)).validate_python(value)
            except ValidationError as exc:
                raise ValueError(f"args.{key} = {value!r}: {first_message(exc)}") from None
        a, b = self.args.get("a", 0.0), self.args.get("b", 1.0)  # uniform's bounds
        if self.name == "uniform" and not (isinstance(a, int | float) and isinstance(b, int | float) and a < b):
            raise ValueError(f"args: uniform needs a < b, got a = {a!r}, b = {b!r}")
        return self


class ModelSpec(Strict):
    """An MLP: its hidden layer sizes (``hidden``, or ``depth`` layers of ``width`` units), one
    activation for every hidden layer, and dropout after each."""

    hidden: list[PosInt] = []
    activation: Literal["relu", "sigmoid", "tanh"] = "relu"
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="before")
    @classmethod
    def _depth_width(cls, data: Any) -> Any:
        """``{depth: 30, width: 256}`` is ``hidden: [256] * 30``."""
        if not isinstance(data, dict) or not ({"depth", "width"} & set(data)):
            return data
        data = dict(data)
        depth, width = data.pop("depth", None), data.pop("width", None)
        if "hidden" in data:
            raise ValueError("give hidden, or depth and width, not both")
        if not (isinstance(depth, int) and isinstance(width, int) and depth > 0 and width > 0):
            raise ValueError(f"depth = {depth!r}, width = {width!r}; allowed: two positive integers")
        data["hidden"] = [width] * depth
        return data


class Diagnostics(Strict):
    """Per-layer statistics of every model on a fixed probe batch (the first ``probe_rows`` rows
    of the training split, eval mode), before optimiser step ``s`` for each ``s`` of ``at_steps``
    and after the last step (``initlab.nets.diagnostics.Probe``)."""

    probe_rows: PosInt = 256  # more than the training rows: all of them
    at_steps: list[Annotated[int, Field(ge=0)]] = [0, 100]


def _distinct(v: list) -> list:
    """A repeated value would train the same run twice under one name."""
    repeated = sorted({x for x in v if v.count(x) > 1}, key=str)
    if repeated:
        raise ValueError(f"{', '.join(map(str, repeated))} given twice; allowed: distinct values")
    return v


class Reproduce(Strict):
    """A source's own runs, measured as its code measures them: rows named ``reproduce-...``.

    Each of ``inits`` x ``losses`` x ``seeds`` (the study's first learning rate, no normalisation)
    is one run. ``all_data``: train on train + validation + test, as sources 000 and 002 did.
    ``split: shuffle``: source 001's split, ``np.random.shuffle`` of the training pool (the
    study's training and validation rows, in the dataset's order), seeded by the run's seed, its
    first ``split.val_fraction`` the validation rows; not stratified. ``validate_with_dropout``:
    validation accuracy measured in training mode, dropout on (source 001 never calls
    ``model.eval()``).
    """

    inits: list[str] = Field(min_length=1)
    losses: list[LossName] = Field(min_length=1)
    seeds: list[Seed] = Field([0], min_length=1)
    all_data: bool = False
    split: Literal["study", "shuffle"] = "study"
    validate_with_dropout: bool = False

    _distinct_values = field_validator("inits", "losses", "seeds")(_distinct)


class StudyTrain(Strict):
    model: ModelSpec = ModelSpec()
    # Several architectures by label (a grid axis, as inits): each variant trains one of them.
    models: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], ModelSpec] = {}
    diagnostics: Diagnostics = Diagnostics()
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: list[PosFloat]
    batch_size: PosInt | None = None  # None: full batch
    shuffle: bool = True
    epochs: PosInt
    seeds: list[Seed] = Field(min_length=1)
    inits: list[str] = Field(min_length=1)
    losses: list[LossName] = Field(min_length=1)
    normalize: list[Literal["none", "zscore", "batchnorm"]] = ["none"]
    reproduce: Reproduce | None = None
    # After training, score each model on the whole training split (train_accuracy, train_loss_eval).
    eval_train: bool = True
    # Score the validation split every this many epochs, and always after the last; null: about
    # 1,000 points per run (every epoch up to 1,000 epochs).
    val_every: PosInt | None = None

    @field_validator("lr")
    @classmethod
    def _some_lr(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("empty list; allowed: one or more positive learning rates")
        return v

    _distinct_values = field_validator("lr", "seeds", "inits", "losses", "normalize")(_distinct)

    @model_validator(mode="before")
    @classmethod
    def _model_or_models(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" in data and "models" in data:
            raise ValueError("models: give model (one architecture) or models (several by label), not both")
        return data

    def spec(self, label: str) -> ModelSpec:
        """The architecture of a variant's ``model`` label ("" when the study has one)."""
        return self.models[label] if label else self.model

    @property
    def model_labels(self) -> list[str]:
        return list(self.models) or [""]


class TrackingParams(Strict):
    max_points_per_metric: PosInt = 1000
    log_models: bool = True
    store_timeout_s: Annotated[PosFloat, Field(le=3600)] = 10.0


class ReportParams(Strict):
    first_batches: PosInt = 100


class StudyParams(Strict):
    """One study: where its data comes from, how it is split, what is trained, and its inits."""

    data: Source
    split: Split  # required, as every key a stage depends on (dvc.yaml names studies.<s>.split)
    train: StudyTrain
    inits: dict[str, InitSpec]  # the initialisers this study names, by label
    # Heavier settings of a study whose default is kept light, by name: dotted keys of the study
    # and their values, run with `dvc exp run -S studies.<study>.<key>=<value>` (``profile_args``).
    profiles: dict[str, dict[str, Any]] = {}

    def with_profile(self, name: str, raw: dict | None = None) -> dict:
        """``raw`` (default: this study dumped whole) with profile ``name``'s dotted keys set; a key
        outside the study's data, split or train is a ``ValueError``."""
        raw = copy.deepcopy(self.model_dump() if raw is None else raw)
        for dotted, value in self.profiles[name].items():
            *parents, leaf = dotted.split(".")
            node = raw
            for part in parents:  # an unset (None) parent becomes {}, as in a dump without defaults
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part] if isinstance(node, dict) else None
            if not isinstance(node, dict) or parents[:1] not in (["data"], ["split"], ["train"]):
                raise ValueError(f"profiles.{name}: {dotted!r} is not a key of the study's data, split or train")
            node[leaf] = value
        return raw

    @model_validator(mode="after")
    def _profiles_valid(self) -> StudyParams:
        for name in self.profiles:
            raw = self.with_profile(name, self.model_dump(exclude_defaults=True, exclude={"profiles"}))
            try:
                StudyParams.model_validate(raw)
            except ValidationError as exc:
                raise ValueError(f"profiles.{name}: {first_error(exc).removeprefix('params.yaml: ')}") from None
        return self

    @model_validator(mode="after")
    def _inits_named(self) -> StudyParams:
        st = self.train
        named = [("train.inits", label) for label in st.inits]
        named += [("train.reproduce.inits", label) for label in (st.reproduce.inits if st.reproduce else [])]
        for where, label in named:
            if label not in self.inits:
                raise ValueError(
                    f"{where}: {label!r} is not in this study's inits; allowed: {', '.join(self.inits)}"
                )
        return self


StudyName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


def _device(v: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", v):
        raise ValueError("allowed: cpu, cuda, cuda:N")
    return v


class Params(Strict):
    device: Annotated[str, AfterValidator(_device)] = "cpu"
    studies: dict[StudyName, StudyParams] = Field(min_length=1)
    tracking: TrackingParams = TrackingParams()
    report: ReportParams = ReportParams()

    def study(self, name: str) -> StudyParams:
        """The study called ``name``; a ``ParamsError`` naming the studies there are if none is."""
        if name not in self.studies:
            raise ParamsError(
                f"unknown study {name!r}; allowed: {', '.join(self.studies)} (the keys of studies: in params.yaml)"
            )
        return self.studies[name]
