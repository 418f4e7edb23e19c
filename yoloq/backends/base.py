"""The one interface every format implements: export an artifact, load a runtime, predict."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Protocol

import numpy as np

if TYPE_CHECKING:
    from yoloq.config import EvalConfig, VariantConfig
    from yoloq.data.calibration import CalibrationSet
    from yoloq.data.types import DatasetSplit
    from yoloq.models import SourceModel


@dataclass(frozen=True)
class OptionSpec:
    """A backend option a variant may set: its type, default and allowed values."""

    type: type
    default: Any
    choices: tuple[Any, ...] | None = None
    help: str = ""


@dataclass(frozen=True)
class ExportContext:
    """What an export needs: the source model, the variant, the input size, calibration and a work folder."""

    source: SourceModel
    variant: VariantConfig
    imgsz: int
    calibration: CalibrationSet
    workdir: Path
    eval_cfg: EvalConfig | None = None
    holdout: Callable[[int, tuple[Path, ...]], DatasetSplit] | None = None  # (n, images used) -> held-out split
    threads: int = 2

    def option(self, key: str) -> Any:
        """The variant's option ``key`` (validated against the backend's spec)."""
        return self.variant.options[key]


@dataclass(frozen=True)
class Artifact:
    """An exported model on disk and what the runtime needs to know about it."""

    path: Path
    format: str
    precision: str
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        """Bytes on disk (a folder counts every file in it)."""
        p = Path(self.path)
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size


class Runtime(Protocol):
    """A loaded model: ``predict`` maps an NCHW float32 batch in [0, 1] to the raw head output.

    The raw output is ``[B, 4 + nc, N]`` (xywh in input pixels, class scores) for NMS heads, or
    ``[B, K, 6]`` (xyxy, score, class) for end-to-end heads, the same for every backend.
    """

    info: dict[str, Any]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on one batch."""
        ...


class Backend(ABC):
    """A format: exports a source model to an artifact and loads it into a runtime."""

    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    sources: ClassVar[tuple[str, ...]] = ("pt", "onnx")
    options: ClassVar[Mapping[str, OptionSpec]] = {}
    install_hint: ClassVar[str] = ""

    @abstractmethod
    def version(self) -> str:
        """The runtime library's version; raises BackendUnavailable when it is not installed."""

    def check(self, variant: VariantConfig, source: SourceModel) -> None:
        """Raise BackendUnavailable when this variant cannot run here (missing package, no GPU, wrong source)."""
        self.version()
        if source.kind not in self.sources:
            from yoloq.errors import BackendUnavailable

            raise BackendUnavailable(
                f"{self.name} needs a {' or '.join('.' + s for s in self.sources)} source model, "
                f"got {source.path.name}")

    @abstractmethod
    def export(self, ctx: ExportContext) -> Artifact:
        """Export (and quantize) the source model for ``ctx.variant`` into ``ctx.workdir``."""

    @abstractmethod
    def load(self, artifact: Artifact, threads: int, device: str = "cpu") -> Runtime:
        """Load an artifact into a runtime using exactly ``threads`` CPU threads."""
