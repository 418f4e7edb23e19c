"""YAML mappings into frozen dataclasses: unknown keys refused (the closest one suggested), types converted,
every error one :class:`ConfigError` naming the key and what is allowed. Knows no yoloq setting."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from typing import Any, Mapping

from yoloq.errors import ConfigError


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and hasattr(tp, "shorthand"):
            value = tp.shorthand(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}': got {value!r}, expected a mapping")
        return from_mapping(tp, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': got {value!r}, expected a list")
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}': got {value!r}, expected a mapping")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': got {value!r}, expected a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': got {value!r}, expected an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': got {value!r}, expected true or false")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(str(value))
        except ValueError:
            raise ConfigError(f"config key '{key}': got {value!r}, expected one of "
                              f"{', '.join(str(m.value) for m in tp)}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}': got {value!r}, expected a string")
        return str(value)
    return value


def from_mapping(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and converting types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ("base_dir", "resolved")]
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{where}.{k}" if where else str(k)
        if k not in names:
            near = difflib.get_close_matches(str(k), names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{key}'{hint}")
        kwargs[k] = _convert(hints[k], v, key)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name in names and f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"config is missing required key '{(where + '.') if where else ''}{missing[0]}'")
    return cls(**kwargs)


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ConfigError naming ``key``, the ``value`` given and what is ``allowed``, unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': got {value!r}, expected {allowed}")


def at_least(obj: Any, section: str, **least: float) -> None:
    """Check that each named field of ``obj`` is at least its given minimum."""
    for k, m in least.items():
        check(getattr(obj, k) >= m, f"{section}.{k}", getattr(obj, k), f">= {m:g}")
