"""The backend registry: a decorator fills it, ``get_backend(name)`` reads it."""

from __future__ import annotations

import difflib
import importlib
import types
from typing import TYPE_CHECKING

from yoloq.errors import ConfigError

if TYPE_CHECKING:
    from yoloq.backends.base import Backend
    from yoloq.config import VariantConfig

_BACKENDS: dict[str, type[Backend]] = {}
_MODULES = ("torch_backend", "onnxruntime", "openvino", "litert", "tensorrt")
_loaded = False


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator adding a backend under ``cls.name``; a second class with one name is an error."""
    if cls.name in _BACKENDS and _BACKENDS[cls.name] is not cls:
        raise RuntimeError(f"backend '{cls.name}' is registered twice ({_BACKENDS[cls.name]} and {cls})")
    _BACKENDS[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for m in _MODULES:  # backend modules import their heavy runtime lazily, so this is cheap
            importlib.import_module(f"yoloq.backends.{m}")
        _loaded = True


def available_formats() -> list[str]:
    """Names of every registered format."""
    _load_all()
    return sorted(_BACKENDS)


def get_backend(name: str) -> Backend:
    """Return a backend instance by format name.

    Raises:
        ConfigError: When no backend has that name (the message lists the valid ones).
    """
    _load_all()
    if name not in _BACKENDS:
        raise ConfigError(f"unknown format '{name}'; valid formats: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name]()


def validate_variant(v: VariantConfig, key: str) -> None:
    """Check a variant's format, precision, device and options against its backend.

    Raises:
        ConfigError: Naming the key, the value and what is allowed.
    """
    _load_all()
    if v.format not in _BACKENDS:
        raise ConfigError(f"config key '{key}.format': unknown format '{v.format}'; "
                          f"valid formats: {', '.join(sorted(_BACKENDS))}")
    cls = _BACKENDS[v.format]
    if v.precision not in cls.precisions:
        raise ConfigError(f"config key '{key}.precision': '{v.precision}' is not a {v.format} precision; "
                          f"valid: {', '.join(cls.precisions)}")
    dev = "cuda" if v.device.startswith("cuda") else v.device
    if dev not in cls.devices:
        raise ConfigError(f"config key '{key}.device': {v.format} runs on {', '.join(cls.devices)}, "
                          f"not '{v.device}'")
    specs = cls.options
    options = dict(v.options)
    for k, val in options.items():
        if k not in specs:
            near = difflib.get_close_matches(k, list(specs), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else (
                f"; valid options: {', '.join(specs)}" if specs else f"; {v.format} takes no options")
            raise ConfigError(f"unknown config key '{key}.options.{k}'{hint}")
        spec = specs[k]
        ok = isinstance(val, spec.type) and not (spec.type is not bool and isinstance(val, bool))
        if spec.type is float and isinstance(val, int) and not isinstance(val, bool):
            ok = True
        if not ok and not (val is None and spec.default is None):
            raise ConfigError(f"config key '{key}.options.{k}': got {val!r}, expected {spec.type.__name__}")
        if spec.choices is not None and val not in spec.choices:
            raise ConfigError(f"config key '{key}.options.{k}': got {val!r}, expected one of {list(spec.choices)}")
    for k, spec in specs.items():  # fill defaults so records show every setting that was used
        options.setdefault(k, spec.default)
    object.__setattr__(v, "options", types.MappingProxyType(options))


def registered() -> dict[str, type[Backend]]:
    """A copy of the registry (format name to backend class)."""
    _load_all()
    return dict(_BACKENDS)

