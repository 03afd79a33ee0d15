"""Typed dataclasses from mappings: the validation under `flexgen.config` and every other typed section (a
FlexDiT transformer's `schedule` entry, a checkpoint's density metadata).

An unknown key is an error naming the key and the closest valid name; values are checked against the annotations
(ints widen to floats; PyYAML's `1e-4` strings read as floats); a field's own `__post_init__` check becomes a
ConfigError naming the field. Imports nothing from flexgen: it is the bottom of the import graph.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


def choice(where: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}{hint}")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _check_value(value: Any, tp: Any, key: str) -> Any:
    """Return `value` checked against the annotation `tp` (ints widen to floats); raise ConfigError otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _check_value(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} fits none of {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)     # PyYAML (YAML 1.1) reads `1e-4`, without a dot, as a string
    if tp is int and not isinstance(value, bool) and isinstance(value, str | float):
        number = float(value) if isinstance(value, float) or _FLOAT.fullmatch(value.strip()) else None
        if number is not None and number.is_integer():
            return int(number)  # `total_samples: 1e9` (a str to PyYAML) or `4.0e6` means the integer written
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def check_range(obj: Any, **bounds: tuple[float | None, float | None]) -> None:
    """Each named field of `obj` lies in [low, high] (None: unbounded; a None value is not checked); a ValueError
    naming the field otherwise (build_dataclass adds the section and the file)."""
    for name, (low, high) in bounds.items():
        value = getattr(obj, name)
        if value is None:
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            want = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
            raise ValueError(f"{name}: must be {want}, got {value!r}")


def build_dataclass(cls: type, data: Any, section: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys. `section` is the dotted path to it."""
    prefix = f"{section}." if section else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{section or 'top level'}: expected a mapping of {cls.__name__} fields, "
                          f"got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown key {prefix}{key}{hint}; valid keys in {section or 'the top level'}: "
                              f"{', '.join(fields)}")
        kwargs[key] = _check_value(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except ValueError as e:                           # a field's own check (__post_init__)
        raise ConfigError(f"{prefix}{e}") from None
