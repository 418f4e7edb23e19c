"""The run config: YAML parsed once into frozen, validated dataclasses.

Unknown keys, wrong types and impossible values raise :class:`ConfigError` naming the key,
the value and what is allowed (with the closest valid key when one is near).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from yoloq.config_harness import LatencyConfig, StreamsConfig
from yoloq.errors import ConfigError
from yoloq.schema import at_least as _at_least
from yoloq.schema import check as _check
from yoloq.schema import from_mapping

# the one YAML-to-dataclass converter and the harnesses' settings, re-exported for callers of the config
__all__ = ["LatencyConfig", "StreamsConfig", "from_mapping"]

class Precision(str, enum.Enum):
    """The numeric precision a variant asks for (what actually ran is in each record's runtime)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class DataRef:
    """A dataset split: ``dataset`` is a name in ``datasets/`` or a path to a dataset YAML."""

    dataset: str
    split: str = "val2017"
    max_images: int | None = None

    @classmethod
    def shorthand(cls, text: str) -> dict[str, Any]:
        """What a bare string means where a split is expected: that dataset's default split."""
        return {"dataset": text}

    def __post_init__(self) -> None:
        _check(self.max_images is None or self.max_images >= 1, "max_images", self.max_images, ">= 1 or null")


@dataclass(frozen=True)
class CalibrationConfig:
    """Where calibration images come from, how many, and the seed that picks them."""

    sources: tuple[DataRef, ...] = (
        DataRef("coco-mini", "train2017"),
        DataRef("coco128", "train2017"),
    )
    images: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        _check(len(self.sources) >= 1, "calibration.sources", self.sources, "at least one source")
        _check(self.images >= 1, "calibration.images", self.images, ">= 1")


EMULATED_CPUS = ("cortex-a76", "cortex-a72", "cortex-a55")  # qemu's -cpu models: Pi 5 / RK3588, Pi 4, RK356x


@dataclass(frozen=True)
class EmulateConfig:
    """Also score a variant on an emulated CPU (qemu-user): ``arch``, ``cpu`` model, ``workers`` (0: one per core),
    ``max_images`` (only the first N evaluation images, compared with the x86 record on those)."""

    arch: str = "aarch64"
    cpu: str = "cortex-a76"
    workers: int = 0
    max_images: Optional[int] = None

    @classmethod
    def shorthand(cls, text: str) -> dict[str, Any]:
        """``emulate: aarch64`` (a Cortex-A76) or ``emulate: cortex-a72`` (that CPU)."""
        return {"cpu": text} if text in EMULATED_CPUS else {"arch": text}

    def __post_init__(self) -> None:
        _check(self.arch == "aarch64", "emulate.arch", self.arch, "'aarch64'")
        _check(self.cpu in EMULATED_CPUS, "emulate.cpu", self.cpu, f"one of {', '.join(EMULATED_CPUS)}")
        _check(0 <= self.workers <= 64 and (self.max_images or 1) >= 1, "emulate", self,
               "workers 0 (one per core) to 64, max_images >= 1 or null")


_TARGET = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_RAY_BUILTIN = ("CPU", "GPU", "memory", "object_store_memory")


@dataclass(frozen=True)
class VariantConfig:
    """One exported model to evaluate: a format, a precision, a device and backend options.

    As parsed, ``options`` holds what the YAML set; the backend registry *resolves* a variant into a
    new one whose options are validated and complete (``resolved`` true). ``format`` is a plain
    string: formats are whatever backends register, so their names live in ``backends/`` only.
    """

    format: str
    precision: Precision = Precision.FP32
    device: str = "cpu"
    name: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    target: str | None = None  # a Ray resource: the variant's latency pass runs on a node that has it
    artifact: str | None = None  # an existing export (e.g. Ultralytics' own) evaluated as it is, not exported
    emulate: Optional[EmulateConfig] = None  # also scored on this instruction set, emulated (a second record)
    resolved: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))
        _check(self.target is None or (bool(_TARGET.fullmatch(self.target)) and self.target not in _RAY_BUILTIN),
               "variant.target", self.target, "a Ray custom resource name (letters, digits, '_', '-', '.'; not "
               f"{', '.join(_RAY_BUILTIN)}) that a node joined with: ray start --resources='{{\"NAME\": 1}}'")
        _check(self.device == "cpu" or self.device.startswith("cuda"), "variant.device", self.device,
               "'cpu' or 'cuda[:N]'")
        if not isinstance(self.precision, Precision):
            try:
                object.__setattr__(self, "precision", Precision(str(self.precision)))
            except ValueError:
                raise ConfigError(f"config key 'precision': '{self.precision}' is not a precision; valid: "
                                  f"{', '.join(p.value for p in Precision)}") from None

    @property
    def label(self) -> str:
        """The variant's name: ``name`` when given, else ``format-precision[-device]``."""
        if self.name:
            return self.name
        suffix = "" if self.device == "cpu" else f"-{self.device.replace(':', '')}"
        return f"{self.format}-{self.precision}{suffix}"


@dataclass(frozen=True)
class EvalConfig:
    """Detection thresholds; the defaults are Ultralytics' validation defaults. ``nms`` is ``yolo val``'s: ``null``
    runs the one-to-many branch with NMS, ``false`` the NMS-free one-to-one branch (YOLOv10, YOLO26: top-k)."""

    conf: float = 0.001
    iou: float = 0.7
    max_det: int = 300
    multi_label: bool = True
    nms: Optional[bool] = None

    def __post_init__(self) -> None:
        _check(self.nms is not True, "eval.nms", self.nms,
               "null (NMS after the one-to-many branch) or false (the NMS-free one-to-one branch); "
               "NMS inside the exported graph is not evaluated")
        _check(0.0 <= self.conf < 1.0, "eval.conf", self.conf, "0 <= conf < 1")
        _check(0.0 < self.iou <= 1.0, "eval.iou", self.iou, "0 < iou <= 1")
        _check(self.max_det >= 1, "eval.max_det", self.max_det, ">= 1")


@dataclass(frozen=True)
class BudgetConfig:
    """The accuracy a non-reference variant must keep: a share of the reference mAP50-95 and/or a drop."""

    min_retention: float | None = None
    max_map_drop: float | None = None

    def __post_init__(self) -> None:
        _check(self.min_retention is None or 0 < self.min_retention <= 1, "budget.min_retention",
               self.min_retention, "0 < x <= 1 or null")
        _check(self.max_map_drop is None or 0 <= self.max_map_drop < 1, "budget.max_map_drop", self.max_map_drop,
               "0 <= x < 1 or null")

    @property
    def active(self) -> bool:
        """Whether any rule is set."""
        return self.min_retention is not None or self.max_map_drop is not None


@dataclass(frozen=True)
class ReportConfig:
    """Report settings: paired bootstrap resamples for the mAP-drop intervals and their seed."""

    bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.bootstrap == 0 or self.bootstrap >= 100, "report.bootstrap", self.bootstrap, "0 (off) or >= 100")


@dataclass(frozen=True)
class QatConfig:
    """Quantization-aware training (``yoloq qat``): fine-tune on train images, then evaluate INT8 formats."""

    epochs: int = 1
    images: int = 128
    batch: int = 8
    lr0: float = 0.0005
    imgsz: int | None = None
    mosaic: float = 0.0
    formats: tuple[str, ...] = ()  # empty: every format that runs a Q/DQ ONNX (the registry resolves it)
    start: str | None = None  # the checkpoint training starts from (default: the model): one whose BatchNorms train

    def __post_init__(self) -> None:
        _at_least(self, "qat", epochs=1, images=4, batch=1)
        _check(0 < self.lr0 < 1, "qat.lr0", self.lr0, "0 < lr0 < 1")
        _check(0 <= self.mosaic <= 1, "qat.mosaic", self.mosaic, "0 <= mosaic <= 1")


@dataclass(frozen=True)
class TuneConfig:
    """``yoloq tune``: where INT8 settings are chosen and how the search spends its time.

    ``data`` is the tuning split (never the evaluation split, never calibration images); candidates are
    scored on its first ``first_images`` images (seeded order), the better ``keep`` share of each
    backend's candidates (and any the first images cannot tell from the best) then on all of them (successive
    halving); ``minutes`` bounds the search.
    ``sensitivity``: for a backend that ranks its layers, one candidate per count N that keeps the N blocks
    ranked worst (on ``sensitivity_images`` calibration images) in float; empty: none. ``sensitivity_layers``: the
    same with single convolutions ranked alone (a smaller float scope, so a faster one; empty, the default: none).
    ``accuracy_control``: where no candidate keeps ``min_retention`` on all tuning images, rank the blocks again
    under the most accurate candidate's settings and keep the fewest of them in float that reach it (1, 2, 4 ...
    up to ``max_float_blocks``, then the count between found by bisection), as NNCF's accuracy control does.
    """

    data: DataRef | None = None
    min_retention: float = 0.99
    first_images: int = 125
    keep: float = 0.5
    minutes: float | None = None
    seed: int = 0
    bootstrap: int = 1000
    sensitivity: tuple[int, ...] = (2, 4)
    sensitivity_layers: tuple[int, ...] = ()
    sensitivity_images: int = 8
    accuracy_control: bool = True
    max_float_blocks: int = 16

    def __post_init__(self) -> None:
        _check(0 < self.min_retention <= 1, "tune.min_retention", self.min_retention, "0 < x <= 1")
        _at_least(self, "tune", first_images=1, bootstrap=100, sensitivity_images=1, max_float_blocks=1)
        _check(all(n >= 1 for n in self.sensitivity), "tune.sensitivity", list(self.sensitivity),
               "counts of blocks >= 1, e.g. [2, 4], or [] for none")
        _check(all(n >= 1 for n in self.sensitivity_layers), "tune.sensitivity_layers",
               list(self.sensitivity_layers), "counts of layers >= 1, e.g. [2, 8], or [] for none")
        _check(0 < self.keep <= 1, "tune.keep", self.keep, "0 < keep <= 1")
        _check(self.minutes is None or self.minutes > 0, "tune.minutes", self.minutes, "> 0 or null")


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``yoloq run`` needs."""

    model: str
    data: DataRef
    variants: tuple[VariantConfig, ...]
    imgsz: int = 640
    calibration: CalibrationConfig = CalibrationConfig()
    eval: EvalConfig = EvalConfig()
    latency: LatencyConfig = LatencyConfig()
    streams: StreamsConfig = StreamsConfig()
    output: str = "results/run"
    reference: str | None = None
    budget: BudgetConfig = BudgetConfig()
    report: ReportConfig = ReportConfig()
    qat: QatConfig = QatConfig()
    tune: TuneConfig = TuneConfig()
    emulate: Optional[EmulateConfig] = None  # every variant also scored emulated (a variant's own setting wins)
    base_dir: str = "."

    def __post_init__(self) -> None:
        _check(32 <= self.imgsz <= 4096 and self.imgsz % 32 == 0, "imgsz", self.imgsz,
               "a multiple of 32 between 32 and 4096")
        _check(len(self.variants) >= 1, "variants", self.variants, "at least one variant")
        labels = [v.label for v in self.variants]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        _check(not dupes, "variants", dupes, "unique variant names (set 'name:' to tell them apart)")
        if self.reference is not None:
            _check(self.reference in labels, "reference", self.reference, f"one of {labels}")

    def emulation(self, v: VariantConfig) -> EmulateConfig | None:
        return v.emulate or self.emulate  # where ``v`` is also scored emulated: its own setting, else the run's

    @property
    def reference_label(self) -> str:
        """The variant every other is compared to: ``reference``, else the first FP32 variant, else the first.

        The shipped configs list the source framework's FP32 (torch) first, so it is the reference.
        """
        if self.reference:
            return self.reference
        for v in self.variants:
            if v.precision == Precision.FP32:
                return v.label
        return self.variants[0].label

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (the resolved config written beside the records)."""
        d = _plain(self)
        d.pop("base_dir", None)
        if d["eval"].get("nms") is None:  # the default: left out, so configs and keys from before it stay valid
            d["eval"].pop("nms", None)
        if d["qat"].get("start") is None:
            d["qat"].pop("start")
        defaults = (("tune", _plain(TuneConfig())), ("emulate", None), ("streams", _plain(StreamsConfig())))
        for k, empty in defaults:  # as a config without the section
            if d[k] == empty:
                d.pop(k)
        return d

    def hash(self) -> str:
        """A short hash of everything that changes results (the output folder excluded)."""
        d = self.to_dict()
        d.pop("output", None)
        d.pop("tune", None)  # where settings are chosen never changes what a run measures
        d.pop("streams", None)  # nor does the throughput pass (it has its own settings key in each record)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _plain(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, VariantConfig):
        d = {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        d.pop("resolved")
        for k in ("target", "artifact", "emulate"):  # defaults left out: configs and hashes stay as they were
            if d[k] is None:
                d.pop(k)
        return d
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def parse_config(data: Mapping[str, Any], base_dir: str | Path = ".") -> RunConfig:
    """Validate a config mapping into a :class:`RunConfig`.

    Args:
        data: The parsed YAML mapping.
        base_dir: The folder relative paths in the config are resolved against.

    Returns:
        The frozen run config as written. Formats and backend options are checked later, when the
        backend registry resolves it (``yoloq.backends.resolve_config``): config is the first stage
        and knows no backend.

    Raises:
        ConfigError: Naming the key, the value and what is allowed.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"config must be a mapping of keys, got {type(data).__name__}")
    cfg = from_mapping(RunConfig, data)
    return dataclasses.replace(cfg, base_dir=str(base_dir))


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML config file.

    Raises:
        ConfigError: When the file is missing, is not YAML, or any value is invalid.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (give the path to a YAML file such as configs/default.yaml)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} cannot be read: {e}") from None
    return parse_config(data or {}, base_dir=p.resolve().parent)
