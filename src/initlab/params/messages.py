"""A pydantic ``ValidationError`` as the one line a person reads: the key, the value, what is allowed."""

from __future__ import annotations

import re

from pydantic import ValidationError

from initlab.params.sources import DATA_KINDS


def first_message(exc: ValidationError) -> str:
    return exc.errors()[0]["msg"].removeprefix("Value error, ")


def first_error(exc: ValidationError, file: str = "params.yaml") -> str:
    """The first error of ``exc`` as ``<file>: <key> = <value>: <what is allowed>``."""
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
        return f"{file}: missing key {key}"
    if err["type"] == "extra_forbidden":
        return f"{file}: unknown key {key}; remove it or check its spelling"
    value = err.get("input")
    if isinstance(value, dict) or not key:  # a check across keys: its message names them
        return f"{file}: {key}.{msg}" if key else f"{file}: {msg}"
    if len(loc) < len(err["loc"]):  # a union: say every form allowed
        msg = "allowed: a number, 'zeros' or 'default'" if loc[-1] == "bias" else msg
    return f"{file}: {key} = {value!r}: {msg}"
