"""The backend registry: a decorator fills it; ``get_backend(name)`` reads it; ``resolve_config`` checks a
parsed config against it and returns a new config whose variants carry every option they use."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
from typing import TYPE_CHECKING, Any, Mapping

from yoloq.errors import ConfigError

if TYPE_CHECKING:
    from yoloq.backends.base import Backend, OptionSpec, Style
    from yoloq.config import RunConfig, VariantConfig

_BACKENDS: dict[str, type[Backend]] = {}
_MODULES = ("torch_backend", "onnxruntime", "openvino", "litert", "executorch", "ncnn", "tensorrt", "rknn", "imx500")
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


def _unknown(name: str, key: str | None = None) -> ConfigError:
    where = f"config key '{key}': " if key else ""
    return ConfigError(f"{where}unknown format '{name}'; valid formats: {', '.join(sorted(_BACKENDS))}")


def backend_class(name: str) -> type[Backend]:
    """The backend class registered under ``name``.

    Raises:
        ConfigError: When no backend has that name (the message lists the valid ones).
    """
    _load_all()
    if name not in _BACKENDS:
        raise _unknown(name)
    return _BACKENDS[name]


def get_backend(name: str) -> Backend:
    """A backend instance by format name (see :func:`backend_class`)."""
    return backend_class(name)()


def style_of(name: str) -> Style:
    """How plots draw the format ``name`` (a default style for an unknown one)."""
    from yoloq.backends.base import Style

    _load_all()
    cls = _BACKENDS.get(name)
    return cls.style if cls else Style()


def _check_value(spec: OptionSpec, val: Any, key: str) -> None:
    ok = isinstance(val, spec.type) and not (spec.type is not bool and isinstance(val, bool))
    if spec.type is float and isinstance(val, int) and not isinstance(val, bool):
        ok = True
    if not ok and not (val is None and spec.default is None):
        raise ConfigError(f"config key '{key}': got {val!r}, expected {spec.type.__name__}")
    if spec.minimum is not None and val is not None and val < spec.minimum:
        raise ConfigError(f"config key '{key}': got {val!r}, expected >= {spec.minimum:g}")
    if spec.maximum is not None and val is not None and val > spec.maximum:
        raise ConfigError(f"config key '{key}': got {val!r}, expected <= {spec.maximum:g}")
    if spec.choices is not None and val not in spec.choices:
        raise ConfigError(f"config key '{key}': got {val!r}, expected one of {list(spec.choices)}")


def resolve_options(cls: type[Backend], precision: str, given: Mapping[str, Any], key: str,
                    stored: bool = False) -> dict[str, Any]:
    """Validate ``given`` against the backend's option specs and fill the defaults for ``precision``.

    Only options that apply to ``precision`` are filled (an FP32 variant carries no INT8 settings, so
    changing an INT8 default never invalidates FP32 results).

    Raises:
        ConfigError: Unknown option, wrong type or value, or an option the precision does not use.
    """
    specs = cls.options
    for k, val in given.items():
        if k not in specs:
            near = difflib.get_close_matches(k, list(specs), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else (
                f"; valid options: {', '.join(specs)}" if specs else f"; {cls.name} takes no options")
            raise ConfigError(f"unknown config key '{key}.options.{k}'{hint}")
        spec = specs[k]
        if precision not in spec.precisions and stored:
            continue  # a run's stored config from older versions lists every option on every variant
        if precision not in spec.precisions:
            raise ConfigError(f"config key '{key}.options.{k}': applies to {cls.name} "
                              f"{'/'.join(spec.precisions)} variants, not {precision}")
        _check_value(spec, val, f"{key}.options.{k}")
    return {k: given[k] if k in given else spec.absent(stored) for k, spec in specs.items()
            if precision in spec.precisions}


def resolve_variant(v: VariantConfig, key: str, stored: bool = False) -> VariantConfig:
    """Check a variant's format, precision, device and options against its backend.

    Returns:
        A new frozen variant with every option that applies filled in (``resolved`` true).

    Raises:
        ConfigError: Naming the key, the value and what is allowed.
    """
    _load_all()
    if v.format not in _BACKENDS:
        raise _unknown(v.format, f"{key}.format")
    cls = _BACKENDS[v.format]
    precision = str(v.precision)
    if precision not in cls.precisions:
        raise ConfigError(f"config key '{key}.precision': '{precision}' is not a {v.format} precision; "
                          f"valid: {', '.join(cls.precisions)}")
    dev = "cuda" if v.device.startswith("cuda") else v.device
    if dev not in cls.devices:
        raise ConfigError(f"config key '{key}.device': {v.format} runs on {', '.join(cls.devices)}, "
                          f"not '{v.device}'")
    if v.artifact:  # an existing export runs as it is: no export option applies
        if v.options:
            raise ConfigError(f"config key '{key}.options': a variant with 'artifact' evaluates that file as it is; "
                              f"export options ({', '.join(v.options)}) do not apply")
        return dataclasses.replace(v, options={}, resolved=True)
    options = resolve_options(cls, precision, v.options, key, stored)
    return dataclasses.replace(v, options=options, resolved=True)


def resolve_config(cfg: RunConfig, stored: bool = False) -> RunConfig:
    """``cfg`` with every variant resolved against its backend, and the QAT formats checked.

    ``stored``: the config comes from a run folder (``yoloq reproduce``), where older versions wrote
    every option on every variant; options that do not apply to a variant's precision are dropped.

    Raises:
        ConfigError: Naming the key, the value and what is allowed.
    """
    variants = tuple(resolve_variant(v, f"variants[{i}]", stored) for i, v in enumerate(cfg.variants))
    for i, v in enumerate(variants):
        for k, spec in _BACKENDS[v.format].options.items():
            limit = functools.reduce(getattr, spec.at_most.split("."), cfg) if spec.at_most else None
            if limit is not None and k in v.options and v.options[k] > limit:
                raise ConfigError(f"config key 'variants[{i}].options.{k}': got {v.options[k]}, expected at most "
                                  f"{spec.at_most} ({limit}): {spec.help}")
    qat = cfg.qat
    if not qat.formats:
        qat = dataclasses.replace(qat, formats=tuple(sorted(n for n, c in _BACKENDS.items() if c.reads_qdq_onnx)))
    for i, fmt in enumerate(qat.formats):
        cls = _BACKENDS.get(fmt)
        if cls is None:
            raise _unknown(fmt, f"qat.formats[{i}]")
        if not cls.reads_qdq_onnx:
            readers = sorted(n for n, c in _BACKENDS.items() if c.reads_qdq_onnx)
            raise ConfigError(f"config key 'qat.formats[{i}]': {fmt} cannot run a Q/DQ INT8 ONNX; "
                              f"valid: {', '.join(readers)}")
    return dataclasses.replace(cfg, variants=variants, qat=qat)


def registered() -> dict[str, type[Backend]]:
    """A copy of the registry (format name to backend class)."""
    _load_all()
    return dict(_BACKENDS)
