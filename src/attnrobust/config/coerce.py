"""TOML values checked against a section dataclass's annotations: the one place a config value gets its type, and
the one spelling of the errors ("section.key: expected ..., got ...")."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from attnrobust.errors import UserError


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Return value if it fits the annotation `hint` (int accepted for float), else raise UserError naming `where`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        for option in options:
            try:
                return coerce(value, option, where)
            except UserError:
                continue
        raise UserError(f"{where}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if hint is type(None):
        if value is None:
            return None
        raise UserError(f"{where}: expected nothing, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if origin is dict or hint is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise UserError(f"{where}: expected a table (key = value pairs), got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise UserError(f"{where}: expected one of {', '.join(map(repr, typing.get_args(hint)))}, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise UserError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    return value


def field_hints(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_keys(table: dict, valid: typing.Iterable[str], section: str) -> None:
    valid = list(valid)
    for key in table:
        if key not in valid:
            raise UserError(f"{section}.{key}: unknown key; valid keys: {', '.join(valid)}")


def build_section(cls, table: dict, section: str):
    hints = field_hints(cls)
    check_keys(table, hints, section)
    return cls(**{k: coerce(v, hints[k], f"{section}.{k}") for k, v in table.items()})
