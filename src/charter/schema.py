"""Typed dataclasses from YAML: unknown keys, wrong types and empty strings are
errors naming file:line. Each field's documentation is the string literal
written under it (read with `field_docs`), so the docs live next to the code.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
import typing

from .errors import CharterError
from .yamlio import LineDict


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """Map each dataclass field to the docstring written below it."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for prev, node in zip(body, body[1:]):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name)
                and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            docs[prev.target.id] = inspect.cleandoc(node.value.value)
    return docs


def _loc(data, key=None):
    return data.loc(key) if isinstance(data, LineDict) else "<config>"


def _convert(tp, value, loc: str, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, loc, key)
            except CharterError as e:
                errors.append(str(e))
        raise CharterError(errors[-1] if errors else f"{loc}: {key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise CharterError(f"{loc}: {key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise CharterError(f"{loc}: {key} must be a list, got {type(value).__name__}")
        return [_convert(args[0], v, loc, f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise CharterError(f"{loc}: {key} must be a mapping, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, key + ".", loc)
    if tp is bool:
        if not isinstance(value, bool):
            raise CharterError(f"{loc}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CharterError(f"{loc}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CharterError(f"{loc}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise CharterError(f"{loc}: {key} must be a string, got {type(value).__name__}")
        return str(value)
    return value


def _with_defaults(value: dict, default) -> dict:
    """Fill keys missing from a partial section with the default section's values,
    so `pools.redteam.limit=3` keeps the default `source`."""
    for f in dataclasses.fields(default):
        cur = getattr(default, f.name)
        if f.name not in value:
            value[f.name] = cur
        elif dataclasses.is_dataclass(cur) and isinstance(value[f.name], dict):
            _with_defaults(value[f.name], cur)
    return value


def from_dict(cls, data, prefix: str = "", loc: str | None = None):
    """Build dataclass `cls` from a (Line)dict, checking keys and types; `loc` names where it came from."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CharterError(f"{loc or _loc(data)}: {prefix.rstrip('.') or cls.__name__} must be a mapping, "
                           f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(fields)})"
            raise CharterError(f"{_loc(data, key)}: unknown key {prefix + str(key)!r}{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            value = data[name]
            if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
                if dataclasses.is_dataclass(default):
                    value = _with_defaults(value, default)
            kwargs[name] = _convert(hints[name], value, _loc(data, name), prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise CharterError(f"{_loc(data)}: missing required key {prefix + name!r}")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check:
        check(data)
    return obj


def to_dict(obj):
    return dataclasses.asdict(obj)
