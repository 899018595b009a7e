"""Reading ``params.yaml``: YAML refused on a duplicate key, then validated as ``Params``, any
error as one line naming the key, the value and what is allowed (``read_yaml`` reads
``report.yaml`` too: ``initlab.params.words``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from initlab.errors import ParamsError
from initlab.params.messages import first_error
from initlab.params.schema import Params


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


def read_yaml(path: Path, kind: str = "params", option: str = "--params", default: str = "params.yaml") -> Any:
    """The YAML file ``path`` as read; a ``ParamsError`` of one line if it is missing or not YAML
    (``kind`` of file, the command-line ``option`` that names another, and its ``default``)."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root or pass {option}") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder; pass a {kind} file ({option} {default})") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{path}: not valid YAML{where}: {what}") from None


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise ``ParamsError`` with one line on anything bad."""
    path = Path(path)
    return validate_params(read_yaml(path), path)


def validate_params(raw: Any, path: Path | str = "params.yaml") -> Params:
    """``raw`` (params.yaml as read) as ``Params``; a ``ParamsError`` of one line naming the key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(first_error(exc, str(path)).replace("\n", " ")) from None
