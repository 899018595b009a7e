"""The params schema, tested from itself: every field of every model, walked from the validated
params.yaml and report.yaml, gets the values a careless edit gives (negative, zero, huge, a bool, a string, inf,
NaN; an unknown name where a name goes). Each is refused with one line naming the field, or is
one of the few accepted on purpose (``ACCEPTED``, with the reason). A field added later is tried
without anyone remembering to, and one that accepts something new fails here until it is refused
or listed."""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Any, Literal

import pytest
import yaml
from pydantic import AfterValidator, BaseModel

from conftest import REPO
from initlab.errors import ParamsError
from initlab.nets.registry import INITIALIZERS
from initlab.params import schema as config
from initlab.params import sources, words
from initlab.params.fields import OneOf, Strict
from initlab.params.load import validate_params
from initlab.params.schema import init_arg_types
from initlab.params.words import validate_words

RAW = yaml.safe_load((REPO / "params.yaml").read_text())
# A table study (no study of params.yaml reads one), so that TableSource is walked too.
RAW["studies"]["table_example"] = {
    "data": {"kind": "table", "path": "data/t.csv", "target": "label"},
    "split": {"seed": 0},
    "train": {"lr": [0.1], "epochs": 1, "seeds": [0], "inits": ["default"], "losses": ["bce"]},
    "inits": {"default": {"name": "default"}},
}
# Every initialiser once, so that each one's keyword arguments are tried (unused labels are allowed).
RAW["studies"]["table_example"]["inits"].update({f"all_{name}": {"name": name} for name in INITIALIZERS})
BASE = validate_params(RAW)
WORDS_RAW = yaml.safe_load((REPO / "report.yaml").read_text())
WORDS_RAW["studies"]["table_example"] = {"title": "t"}
# Each file: its validated contents, and how it is validated.
FILES = {
    "params.yaml": (BASE, validate_params),
    "report.yaml": (
        validate_words(WORDS_RAW, list(BASE.studies)),
        lambda raw: validate_words(raw, list(BASE.studies)),
    ),
}

# (model.field, case) accepted by the schema, and why. Anything else must be refused.
ACCEPTED = {
    ("LineSource.start", "negative"): "x may start below zero (seed 000: -2)",
    ("LineSource.start", "zero"): "x may start at zero",
    ("LineSource.threshold", "negative"): "a threshold inside [start, stop)",
    ("LineSource.threshold", "zero"): "a threshold inside [start, stop)",
    ("LineSource.holdout_seed", "zero"): "a seed",
    ("EcgSource.peak_distance", "huge"): "the record decides: prepare refuses one that leaves too few beats",
    ("Split.seed", "zero"): "a seed",
    ("Split.train_subset", "huge"): "the data decides: prepare refuses a subset above the split's rows",
    ("Split.test_subset", "huge"): "the data decides: prepare refuses a subset above the split's rows",
    ("InitSpec.bias", "negative"): "a constant bias (seed 000: -10)",
    ("InitSpec.bias", "zero"): "a constant bias",
    ("ModelSpec.hidden", "huge"): "memory decides: train refuses a model that does not fit, before allocating",
    ("ModelSpec.dropout", "zero"): "no dropout",
    ("Diagnostics.probe_rows", "huge"): "more than the training rows probes all of them",
    ("Diagnostics.at_steps", "zero"): "before the first step",
    ("Diagnostics.at_steps", "huge"): "a step past the last is never reached; the last is always probed",
    ("Reproduce.seeds", "zero"): "a seed",
    ("StudyTrain.seeds", "zero"): "a seed",
    ("StudyTrain.batch_size", "huge"): "the data decides: train refuses a batch above the training rows",
    ("StudyTrain.epochs", "huge"): "memory decides: train refuses curves that would not fit",
    ("StudyTrain.val_every", "huge"): "validates once, after the last epoch",
    ("TrackingParams.max_points_per_metric", "huge"): "curves are logged whole",
    ("ReportParams.first_batches", "huge"): "the whole curve",
    ("CompareRow.digits", "zero"): "a figure rounded to units",
    ("constant.val", "negative"): "any constant (seed 000: -5)",
    ("constant.val", "zero"): "the zeros start, by another name",
    ("uniform.a", "negative"): "U(a, b) for any a < b (seed 001: -0.5)",
    ("uniform.a", "zero"): "U(0, 1) (seed 001)",
    ("normal.mean", "negative"): "any mean",
    ("normal.mean", "zero"): "N(0, std)",
    ("normal.std", "zero"): "a constant start",
    ("kaiming_uniform.a", "negative"): "leaky ReLU's negative slope is any number",
    ("kaiming_uniform.a", "zero"): "ReLU",
    ("kaiming_normal.a", "negative"): "leaky ReLU's negative slope is any number",
    ("kaiming_normal.a", "zero"): "ReLU",
}


def _parts(annotation: Any) -> tuple[set[type], set[Any], list[OneOf], bool]:
    """What a field's annotation admits: number types, Literal values, registry checks, and
    whether it is a list (Annotated, unions and lists unwrapped)."""
    numbers: set[type] = set()
    literals: set[Any] = set()
    names: list[OneOf] = []
    is_list = False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        names += [
            m.func for m in annotation.__metadata__ if isinstance(m, AfterValidator) and isinstance(m.func, OneOf)
        ]
        n, lit, nm, il = _parts(args[0])
        return numbers | n, literals | lit, names + nm, il
    if origin is Literal:
        return numbers, set(args), names, False
    if origin in (typing.Union, types.UnionType):
        for a in args:
            n, lit, nm, il = _parts(a)
            numbers, literals, names, is_list = numbers | n, literals | lit, names + nm, is_list or il
        return numbers, literals, names, is_list
    if origin is list:
        n, lit, nm, _ = _parts(args[0])
        return n, lit, nm, True
    if annotation in (int, float):
        numbers.add(annotation)
    return numbers, literals, names, is_list


def _fields(model: BaseModel, path: tuple = ()):
    """(path, "Model.field", field info) of every field under ``model``, models in dicts and lists too."""
    for name, info in type(model).model_fields.items():
        here = (*path, name)
        yield here, f"{type(model).__name__}.{name}", info
        value = getattr(model, name)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        if isinstance(value, BaseModel):
            yield from _fields(value, here)
        for key, item in items:
            if isinstance(item, BaseModel):
                yield from _fields(item, (*here, key))


def _get(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key] if isinstance(node, dict | list) else getattr(node, key)
    return node


def _typed_fields(base: BaseModel):
    """(path, field id, annotation, metadata) of every field, and of every keyword argument of
    every initialiser (``inits.<label>.args.<key>``, typed by the initialiser's signature)."""
    for path, field_id, info in _fields(base):
        if field_id == "InitSpec.args":
            name = _get(base, path[:-1]).name
            for key, hint in init_arg_types(name).items():
                yield (*path, key), f"{name}.{key}", hint, []
        else:
            yield path, field_id, info.annotation, info.metadata


def _cases() -> list[tuple[str, str, tuple, str, Any]]:
    """(file, field id, path, case, value): each model's field once, at its first place in its file."""
    out, seen = [], set()
    for file, path, field_id, annotation, metadata in (
        (file, *f) for file, (base, _) in FILES.items() for f in _typed_fields(base)
    ):
        if field_id in seen:
            continue
        seen.add(field_id)
        numbers, literals, names, is_list = _parts(annotation)
        for m in metadata:  # a field's own Annotated metadata lands here, not in annotation
            if isinstance(m, AfterValidator) and isinstance(m.func, OneOf):
                names.append(m.func)
        values: dict[str, Any] = {}
        if numbers:
            whole = numbers == {int}
            values = {
                "negative": -1 if whole else -0.5,
                "zero": 0,
                "huge": 10**12 if whole else 1e300,
                "bool": True,
                "string": "1",
                "inf": math.inf,
                "nan": math.nan,
            }
        if literals or names:
            values["unknown name"] = "no_such_name"
        for case, value in values.items():
            out.append((file, field_id, path, case, [value] if is_list else value))
    return out


CASES = _cases()


def _with(base: BaseModel, path: tuple, value: Any) -> dict:
    """A file as validated (keys as given, defaults filled where the path needs them), ``path`` set."""
    raw = base.model_dump(exclude_unset=True)
    node = raw
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            node = node[key]
    node[path[-1]] = value
    return raw


def test_the_walk_reaches_every_model_of_the_schema_and_the_cases_are_counted():
    walked = {field_id.split(".")[0] for base, _ in FILES.values() for _, field_id, _ in _fields(base)}
    models = {
        c.__name__
        for module in (config, sources, words)
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, Strict) and c is not Strict
    }
    assert models - walked == set(), "add an example of these models to RAW so that their fields are tried"
    assert len(CASES) > 200  # 1 per enum field, 7 per numeric one; the exact count is in the report
    assert set(ACCEPTED) <= {(f, c) for _, f, _, c, _ in CASES}, "an ACCEPTED entry no case produces"
    assert {file for file, *_ in CASES} == set(FILES)


@pytest.mark.parametrize(
    ("file", "field_id", "path", "case", "value"),
    CASES,
    ids=[f"{c[0]}:{'.'.join(map(str, c[2]))}={c[3]}" for c in CASES],
)
def test_every_field_refuses_a_bad_value_with_one_line_naming_it(file, field_id, path, case, value):
    base, validate = FILES[file]
    try:
        validate(_with(base, path, value))
    except ParamsError as exc:
        message = str(exc)
        assert (field_id, case) not in ACCEPTED, f"listed as accepted, refused: {message}"
        assert "\n" not in message and message.startswith(f"{file}: "), message
        dotted = ".".join(map(str, path))
        # Its key (a list's item: key.0), or, for a rule across keys, the model's key and the field's name.
        assert dotted in message or (
            ".".join(map(str, path[:-1])) in message and re.search(rf"\b{path[-1]}\b", message)
        ), message
        return
    assert (field_id, case) in ACCEPTED, f"{'.'.join(map(str, path))} = {value!r} accepted"
