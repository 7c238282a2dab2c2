"""Typed config sections on pydantic, read from YAML: unknown keys, wrong types and empty strings are
errors naming file:line. Each field's documentation is the docstring written under it, which pydantic
keeps as the field's description, so the docs live next to the code.
"""
from __future__ import annotations

import contextlib
import difflib
import typing
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import CharterError
from .yamlio import LineDict


def _scalar(tp, value):
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        with contextlib.suppress(ValueError):
            return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # `version: 1`
    return value


def _section(tp):
    return isinstance(tp, type) and issubclass(tp, BaseModel)


class Section(BaseModel):
    """A config section: strict types (no `true` for a number), no unknown keys, documented fields."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)

    @field_validator("*", mode="before")
    @classmethod
    def _from_yaml(cls, value, info):
        tp = cls.model_fields[info.field_name].annotation
        if value is None:
            return {} if _section(tp) else None  # `sft:` with nothing under it keeps the defaults
        if typing.get_origin(tp) is list and isinstance(value, list):
            return [_scalar(typing.get_args(tp)[0], v) for v in value]
        return _scalar(str if tp == typing.Optional[str] else tp, value)


def _nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


NonEmpty = Annotated[str, AfterValidator(_nonempty)]
# Sizes and counts: a zero batch or a negative limit is refused when the config loads, not hours into a run.
Positive = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]


def field_docs(cls) -> dict[str, str]:
    """Map each field of a section to the docstring written below it."""
    return {name: f.description or "" for name, f in cls.model_fields.items()}


def _loc(data, key=None) -> str:
    return data.loc(key) if isinstance(data, LineDict) else "<config>"


def _fields_at(cls, path) -> list[str]:
    for part in path:
        tp = cls.model_fields[part].annotation if isinstance(part, str) and part in cls.model_fields else None
        cls = next((t for t in (tp, *typing.get_args(tp)) if _section(t)), cls)
    return list(cls.model_fields)


_NOUNS = {"int": "an integer", "bool": "true or false", "float": "a number", "string": "a string", "list": "a list",
          "model": "a mapping", "dict": "a mapping"}


def _message(cls, data, err) -> str:
    path = err["loc"]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    where, cur = _loc(data), data
    for part in path:  # the line of the deepest key the data holds; a missing key: its mapping's line
        if isinstance(cur, dict) and part in cur:
            where, cur = _loc(cur, part), cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            cur = cur[part]
        else:
            where = _loc(cur) if isinstance(cur, dict) else where
            break
    kind, got = err["type"], err.get("input")
    got = (repr(got) if got is None or isinstance(got, (bool, int, float, str)) else
           "a mapping" if isinstance(got, dict) else "a list" if isinstance(got, list) else type(got).__name__)
    if kind in ("extra_forbidden", "invalid_key"):  # invalid_key: a key that is not a string
        known = _fields_at(cls, path[:-1])
        close = difflib.get_close_matches(str(path[-1]), known, n=1)
        return f"{where}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close
                                                  else f" (known: {', '.join(known)})")
    if kind == "missing":
        return f"{where}: missing required key {key!r}"
    if kind == "literal_error":
        return f"{where}: {key} must be one of {err['ctx']['expected']}, got {got}"
    if kind in ("greater_than", "greater_than_equal"):
        bound = err["ctx"].get("gt", err["ctx"].get("ge"))
        return f"{where}: {key} must be {'greater than' if kind == 'greater_than' else 'at least'} {bound}, got {got}"
    if kind == "value_error":  # our validators phrase their errors as what the value must be
        return f"{where}: {key.rsplit('.', 1)[-1]!r} {err['ctx']['error']}"
    noun = _NOUNS.get(kind.rsplit("_", 1)[0])
    return f"{where}: {key} must be {noun}, got {got}" if noun else f"{where}: {key}: {err['msg']}"


def from_dict(cls, data):
    """Build section `cls` from a (Line)dict; a validation error becomes a CharterError naming file:line."""
    try:
        return cls.model_validate({} if data is None else data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        first = next((x for x in errors if x["type"] in ("extra_forbidden", "invalid_key")), errors[0])  # typos first
        raise CharterError(_message(cls, data, first)) from None
