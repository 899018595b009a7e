"""``params.yaml`` as a validated pydantic model, the paths every stage reads and writes, and variants.

Every number lives in ``params.yaml``; this module only says what is allowed. A bad value stops
the stage before it writes anything, with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import math
import re
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from initlab.errors import ParamsError
from initlab.nets.registry import INITIALIZERS, LOSSES

NORMALIZATIONS = ("none", "zscore", "batchnorm")
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
                raise ValueError(f"args.{key} = {value!r}: {_first_message(exc)}") from None
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
    and after the last step (``initlab.training.loop.layer_stats``)."""

    probe_rows: PosInt = 256  # more than the training rows: all of them
    at_steps: list[Annotated[int, Field(ge=0)]] = [0, 100]


def _distinct(v: list) -> list:
    """A repeated value would train the same run twice under one name."""
    repeated = sorted({x for x in v if v.count(x) > 1}, key=str)
    if repeated:
        raise ValueError(f"{', '.join(map(str, repeated))} given twice; allowed: distinct values")
    return v


class Reproduce(Strict):
    """The seed's own runs, measured as its code measures them: rows named ``reproduce-...``.

    Each of ``inits`` x ``losses`` x ``seeds`` (the study's first learning rate, no normalisation)
    is one run. ``all_data``: train on train + validation + test, as seeds 000 and 002 did.
    ``split: shuffle``: seed 001's split, ``np.random.shuffle`` of the training pool (the study's
    training and validation rows, in the dataset's order), seeded by the run's seed, its first
    ``split.val_fraction`` the validation rows; not stratified. ``validate_with_dropout``: seed
    001 never calls ``model.eval()``, so its validation accuracy is measured with dropout on.
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
    # After training, score each model on the whole training split (seed 000's and 002's
    # figures are training accuracies). Seed 001 reports validation only, so it skips this pass.
    eval_train: bool = True
    # Score the validation split every this many epochs, and always after the last; null: about
    # 1,000 points per run (every epoch up to 1,000 epochs). Seed 001 validates once, after its
    # 2 epochs.
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


class CompareRow(Strict):
    """A figure a seed reported, beside ours: ``metric`` (a column of the evaluate table) over the
    runs matching ``where``, shown as its mean, mean ± std or percentage; or (``show: rank``) the
    best value of ``rank_by`` (an init, say) and those a paired test over seeds cannot tell from it
    (``initlab.results.stats``), not a ranking of means."""

    seed: str
    claim: str
    theirs: str
    metric: str
    where: dict[str, Any] = {}
    show: Literal["mean", "mean_std", "percent", "rank"] = "mean"
    digits: Annotated[int, Field(ge=0, le=8)] = 4
    rank_by: str = "init"
    label: str = ""  # rank: what the metric is called in the row ("validation accuracy")


class StudyParams(Strict):
    """One study: where its data comes from, how it is split, what is trained, and its inits."""

    title: str
    question: str = ""
    compare: list[CompareRow] = []  # the seed's own figures, for the report's first table
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
                raise ValueError(f"profiles.{name}: {_first_error(exc).removeprefix('params.yaml: ')}") from None
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


def _first_message(exc: ValidationError) -> str:
    return exc.errors()[0]["msg"].removeprefix("Value error, ")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    # Drop pydantic's union branch tags ("float", "literal['zeros','default']",
    # "function-after[_float32(), float]") from the key.
    loc = [
        str(p)
        for i, p in enumerate(err["loc"])
        if str(p) not in ("float", "int", "str", "bool")
        and not re.match(r"[a-z-]+\[", str(p))
        and not (i and err["loc"][i - 1] == "data" and str(p) in DATA_KINDS)
    ]  # a source's kind tag
    key = ".".join(loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"params.yaml: missing key {key}"
    if err["type"] == "extra_forbidden":
        return f"params.yaml: unknown key {key}; remove it or check its spelling"
    value = err.get("input")
    if isinstance(value, dict) or not key:  # a check across keys: its message names them
        return f"params.yaml: {key}.{msg}" if key else f"params.yaml: {msg}"
    if len(loc) < len(err["loc"]):  # a union: say every form allowed
        msg = "allowed: a number, 'zeros' or 'default'" if loc[-1] == "bias" else msg
    return f"params.yaml: {key} = {value!r}: {msg}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing a key given twice in one mapping (DVC refuses such a file)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise ``ParamsError`` with one line on anything bad."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root or pass --params") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder; pass a params file (--params params.yaml)") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{path}: not valid YAML{where}: {what}") from None
    return validate_params(raw, path)


def validate_params(raw: Any, path: Path | str = "params.yaml") -> Params:
    """``raw`` (params.yaml as read) as ``Params``; a ``ParamsError`` of one line naming the key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_first_error(exc).replace("params.yaml", str(path), 1).replace("\n", " ")) from None
