"""The one interface every format implements: export an artifact, load a runtime, predict."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from yoloq.config import VariantConfig
    from yoloq.data.calibration import CalibrationSet
    from yoloq.models import SourceModel

Predict = Callable[[np.ndarray], np.ndarray]

ALL_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class OptionSpec:
    """A backend option a variant may set: its type, default, allowed values and the precisions it applies to.

    Setting an option on a precision it does not apply to (``accuracy_control`` on fp32) is a config error.
    """

    type: type
    default: Any
    choices: tuple[Any, ...] | None = None
    help: str = ""
    precisions: tuple[str, ...] = ALL_PRECISIONS
    minimum: float | None = None  # smallest allowed value of a number option
    maximum: float | None = None  # largest allowed value of a number option
    at_most: str | None = None  # a run setting (e.g. "eval.conf") the value may not exceed
    # the value a run's stored config means when it lacks this option (it predates it): a later
    # default must not change what `yoloq reproduce` re-runs; "<default>": the default
    before: Any = "<default>"

    def absent(self, stored: bool = False) -> Any:
        """The value of a config that does not set this option (``stored``: a run folder's config)."""
        return self.before if stored and self.predates else self.default

    @property
    def predates(self) -> bool:
        """Whether configs written before this option existed meant another value than its default."""
        return not (isinstance(self.before, str) and self.before == "<default>")

    def as_before(self, value: Any) -> bool:
        """Whether ``value`` is what configs meant before this option existed (it then stays out of keys)."""
        return self.predates and value == self.before


class Validator(Protocol):
    """Scores a predict function on held-out train images (never calibration or evaluation images).

    ``items`` are the held-out images as opaque items whose first element is the model input, so a
    quantizer with its own loop (NNCF) can hand subsets of them back.
    """

    items: Sequence[tuple[Any, ...]]

    def __call__(self, predict: Predict, items: Sequence[tuple[Any, ...]] | None = None) -> float:
        """mAP50-95 (pycocotools) of ``predict`` on ``items`` (default: all of them)."""
        ...


# (held-out images wanted, calibration images the variant used) -> a validator on other train images
MakeValidator = Callable[[int, int], Validator]


@dataclass(frozen=True)
class ExportContext:
    """What an export needs: the source model, the (resolved) variant, the input size, calibration and a folder.

    ``validator`` is given by the pipeline for accuracy-aware quantization: the export stage calls it
    and never imports evaluation code (NNCF's ``validation_fn`` pattern).
    """

    source: SourceModel
    variant: VariantConfig
    imgsz: int
    calibration: CalibrationSet
    workdir: Path
    validator: MakeValidator | None = None
    threads: int = 2
    max_det: int = 300  # an NMS-free head's top-k (baked into its export)

    def option(self, key: str) -> Any:
        """The variant's option ``key`` (validated and filled by the registry)."""
        return self.variant.options[key]

    def calibration_images(self) -> CalibrationSet:
        """The calibration images this variant uses: the first ``calibration_images`` of the set, when set."""
        return self.calibration.take(self.variant.options.get("calibration_images"))


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


@dataclass(frozen=True)
class GroupError:
    """One layer group's INT8 sensitivity: its name, node names, output SQNR (dB) and relative error."""

    group: str
    nodes: tuple[str, ...]
    sqnr_db: float
    rel_error: float


@dataclass(frozen=True)
class LayerRun:
    """One layer as the runtime executed it: its name, the runtime's op type, the precision it ran in
    (int8, fp32, bf16, fp16, or "convert" for a quantize/dequantize/reorder the runtime inserted), its
    time per inference in ms (None where the runtime has no profiler) and multiply-accumulates."""

    name: str
    op: str
    precision: str
    time_ms: float | None = None
    macs: int = 0


@dataclass(frozen=True)
class TuneCandidate:
    """One INT8 setting a backend offers ``yoloq tune``: a short name, the options it sets on top of the
    backend's defaults, and why it may help. A backend's first candidate is its baseline (the simplest)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    why: str = ""


def lacks_vnni(machine: Mapping[str, Any]) -> bool:
    """Whether an x86 machine (its recorded fingerprint) has no int8 dot-product instruction (AVX-512 VNNI or
    AVX-VNNI): its u8s8 kernels multiply-add pairs into int16 and can saturate."""
    isa = set(machine.get("isa") or [])
    x86 = str(machine.get("arch", "x86_64")) in ("x86_64", "AMD64", "i686")
    return x86 and not ({"avx512_vnni", "avx_vnni", "amx_int8"} & isa) and not machine.get("avx512_vnni")


@dataclass(frozen=True)
class Style:
    """How plots draw a format's points."""

    color: str = "#17becf"


class Backend(ABC):
    """A format: exports a source model to an artifact and loads it into a runtime."""

    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    sources: ClassVar[tuple[str, ...]] = ("pt", "onnx")
    options: ClassVar[Mapping[str, OptionSpec]] = {}
    install_hint: ClassVar[str] = ""
    libraries: ClassVar[tuple[str, ...]] = ()  # the packages whose versions decide this format's results
    style: ClassVar[Style] = Style()
    reads_qdq_onnx: ClassVar[bool] = False  # can run a Q/DQ INT8 ONNX as it is (QAT exports)
    supports_sensitivity: ClassVar[bool] = False  # implements :meth:`sensitivity`
    timed_here: ClassVar[bool] = True  # False: its local runtime is a simulator, no measure of speed

    @classmethod
    def key_extra(cls) -> dict[str, str]:
        """What decides this format's exports beyond yoloq's own environment (``versions()``), for the variant key:
        e.g. the pins of a toolkit that lives in its own environment. Empty for most."""
        return {}

    def setup(self) -> Path | None:
        """Create what this format needs beside yoloq's own environment (``yoloq setup FORMAT``): where it is, or
        None when it needs nothing."""
        return None

    def untimed_reason(self) -> str:
        """Why a variant of a backend that is not ``timed_here`` has no latency from this machine."""
        return f"{self.name} is not timed on this machine"

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

    def adopt(self, path: Path, ctx: ExportContext) -> Artifact:
        """An existing export of this format (``artifact:`` in a variant, e.g. ``yolo export``'s output) as it is,
        checked against the config where the file says what it was exported for (Ultralytics' metadata).

        Raises:
            ExportError: When it was exported for another input size or other classes.
        """
        from yoloq.backends.external import check_metadata

        meta = check_metadata(path, ctx.imgsz, ctx.source.names)
        return Artifact(path, self.name, str(ctx.variant.precision), {"external": True, "metadata": meta,
                                                                     "quantizer": "the file's own exporter"})

    def deployable(self, ctx: ExportContext) -> Artifact:
        """What ships to a device (``yoloq export``): the export itself, unless the format is built on the
        device (TensorRT: the ONNX its builder reads)."""
        return self.export(ctx)

    def deploy_notes(self, model_file: str) -> tuple[dict[str, Any], list[str]]:
        """For a bundle whose model is ``model_file``: the options that make the device's config use it as it
        is (none: the device exports again), and README lines on what to do on the device first."""
        return {}, []

    @abstractmethod
    def load(self, artifact: Artifact, threads: int, device: str = "cpu") -> Runtime:
        """Load an artifact into a runtime using exactly ``threads`` CPU threads."""

    def load_streams(self, artifact: Artifact, streams: int, threads: int, device: str = "cpu") -> list[Runtime]:
        """``streams`` runtimes of ``artifact`` to run concurrently, one per stream, on ``threads`` CPU threads in
        all: by default separate sessions (interpreters, nets) with the threads split between them (at least one
        each, so more streams than threads oversubscribe the cores, as more cameras would). A runtime with its own
        throughput mode overrides this (OpenVINO: one model compiled for throughput, one request per stream).
        Each runtime's ``info["concurrency"]`` says how they share the machine."""
        per = max(1, threads // streams)
        runtimes = [self.load(artifact, per, device) for _ in range(streams)]
        for rt in runtimes:
            rt.info["concurrency"] = f"{streams} separate runtime{'s' * (streams > 1)} x {per} thread{'s' * (per > 1)}"
        return runtimes

    def load_batched(self, artifact: Artifact, batch: int, imgsz: int, threads: int, device: str = "cpu") -> Runtime:
        """One runtime of ``artifact`` taking ``batch`` images of ``imgsz`` per inference (frames from ``batch``
        cameras at once), made by :meth:`batched_runtime` and checked against batch 1
        (:func:`yoloq.backends.batched.check_batch`).

        Raises:
            BatchError: In one line, when this format's exports have a fixed batch of 1, the runtime cannot take
                the batch, or the batched graph's outputs differ from batch 1's.
        """
        from yoloq.backends.batched import BatchError, check_batch, one_line

        what = f"{self.name} {artifact.precision}"
        try:
            rt = self.batched_runtime(artifact, batch, threads, device)
        except BatchError:
            raise
        except Exception as e:  # noqa: BLE001 - the runtime's own reason, in one line
            raise BatchError(f"{what} cannot take a batch of {batch}: {one_line(e)}") from e
        rt.info["batch_check"] = check_batch(rt.predict, self.load(artifact, threads, device).predict, batch, imgsz,
                                             what)
        rt.info["concurrency"] = f"one runtime, {batch} frames an inference, {threads} threads"
        return rt

    def batched_runtime(self, artifact: Artifact, batch: int, threads: int, device: str = "cpu") -> Runtime:
        """A runtime of ``artifact`` at batch ``batch`` (unchecked: :meth:`load_batched` checks it). By default
        none: yoloq's exports have a batch of 1, and a backend that can run the same graph at another batch says
        how."""
        from yoloq.backends.batched import BatchError

        raise BatchError(f"{self.name} exports have a fixed batch of 1")

    def qdq_variant_options(self, onnx_path: Path, machine: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Options of an INT8 variant that runs the Q/DQ ONNX at ``onnx_path`` (``reads_qdq_onnx``) on ``machine``
        (a fingerprint: a backend may adapt the file to its kernels there)."""
        return {"prequantized": str(onnx_path)}

    def explain(self, artifact: Artifact, batch: np.ndarray, threads: int, runs: int = 5) -> list[LayerRun]:
        """The layers as the runtime executes ``artifact`` on ``batch``: op, precision, time (profiled over
        ``runs`` inferences after one warm-up), MACs where the backend can count them.

        Raises:
            NotImplementedError: When the backend cannot show its executed graph.
        """
        raise NotImplementedError(f"{self.name} cannot show the layers it runs")

    def tune_space(self, machine: Mapping[str, Any]) -> list[TuneCandidate]:
        """The INT8 settings ``yoloq tune`` tries for this backend on ``machine`` (a fingerprint), baseline
        first. The default: the backend's defaults alone."""
        return [TuneCandidate("default", {}, f"{self.name}'s defaults")]

    def sensitivity(self, ctx: ExportContext, granularity: str, images: int) -> list[GroupError]:
        """Rank layer groups by the output error their INT8 quantization alone adds (worst first).

        Raises:
            NotImplementedError: When the backend does not support it (``supports_sensitivity``).
        """
        raise NotImplementedError(f"{self.name} does not rank layers")

    def in_int8(self, ctx: ExportContext, groups: list[GroupError]) -> list[GroupError]:
        """The groups of a :meth:`sensitivity` ranking that the variant's own scope computes in INT8 (keeping the
        others in float would change nothing). The default: all of them."""
        return list(groups)

    def keep_float(self, groups: list[GroupError]) -> dict[str, Any]:
        """The variant options that keep ``groups`` (from :meth:`sensitivity`) in float besides its own scope:
        their ONNX node names, where the backend takes ``float_nodes`` (else none: nothing to offer; for no groups,
        the option with an empty list, so ``keep_float([])`` says whether a backend can). ``yoloq tune`` makes its
        sensitivity candidates from this."""
        return {"float_nodes": [n for g in groups for n in g.nodes]} if "float_nodes" in self.options else {}
