"""TensorRT on its current API: explicit quantization and strongly typed networks (TensorRT 10 and 11).

TensorRT 10.1 deprecated implicit INT8 calibration (``IInt8EntropyCalibrator2``) and 10.12 the weak-
typing precision flags (``BuilderFlag.FP16``/``INT8``); 11 removed both. So the precision lives in the
ONNX, never in the builder: INT8 is the Q/DQ ONNX ONNX Runtime's quantizer writes in TensorRT's form
(symmetric int8 activations, per-channel int8 weights, bias in float, the head kept in float as on
every backend, calibrated on yoloq's images: ``onnxruntime`` variant option ``target: tensorrt`` is
that same graph run on the CPU); FP16 is an FP16 ONNX. The network is created strongly typed, with no
precision flag and no calibrator, so the same code builds on Jetson's 10.x and on 11.x.

Engines belong to one GPU and one TensorRT version: the cache key is the sha256 of the ONNX bytes,
the TensorRT version, the GPU name, its compute capability and the optimisation profile (only for a
dynamic input). ``yoloq export`` writes the ONNX with a ``trtexec --stronglyTyped`` line instead, for a
device (a Jetson) where the engine must be built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.backends.base import Artifact, Backend, ExportContext, OptionSpec, Style
from yoloq.backends.onnxruntime.backend import OnnxRuntimeBackend
from yoloq.backends.onnxruntime.graph import fp16_onnx
from yoloq.backends.registry import register
from yoloq.backends.scope import CALIBRATION_IMAGES, SCOPE_OPTIONS
from yoloq.errors import BackendUnavailable, ExportError, HardwareMissing
from yoloq.progress import step

INSTALL_HINT = ("TensorRT needs an NVIDIA GPU and the full builder: pip install tensorrt-cu12 "
                "(served from NVIDIA's index, pypi.nvidia.com), NVIDIA's TensorRT container, or JetPack on a Jetson")
MIN_MAJOR = 10  # explicit quantization in a strongly typed network


def _device_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def gpu_identity(device: str) -> dict[str, Any]:
    """The GPU an engine is built for: name and compute capability (the engine runs only there)."""
    import torch

    i = _device_index(device)
    major, minor = torch.cuda.get_device_capability(i)
    return {"gpu": torch.cuda.get_device_name(i), "compute_capability": f"{major}.{minor}"}


def _check(ok: Any, what: str) -> None:
    if not ok:
        raise RuntimeError(f"TensorRT {what} failed")


def precisions_of(engine: Any) -> dict[str, int]:
    """Layer count by output data type, from the engine inspector (the engine is built with detailed
    profiling verbosity): what ran, not what was asked."""
    import tensorrt as trt

    info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    counts: dict[str, int] = {}
    for layer in info.get("Layers", []):
        outs = layer.get("Outputs", []) if isinstance(layer, dict) else []
        kind = str(outs[0].get("Format/Datatype", "")).split(" ")[0].lower() if outs else ""
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


class TrtRuntime:
    """A deserialised engine on its device: I/O dtypes from the engine, one stream, every call checked."""

    def __init__(self, engine_path: Path, device: str) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        self.device = torch.device(device)
        with torch.cuda.device(self.device):  # engine, context, stream and buffers on the variant's device
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
            _check(self.engine, "engine deserialisation")
            self.context = self.engine.create_execution_context()
            _check(self.context, "execution context creation")
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._in = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._out = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT8: torch.int8,
                  trt.DataType.INT32: torch.int32}
        self._in_dtype = dtypes[self.engine.get_tensor_dtype(self._in)]
        self._out_dtype = dtypes[self.engine.get_tensor_dtype(self._out)]
        self.info: dict[str, Any] = {"device": str(self.device), "tensorrt": trt.__version__,
                                     "layer_precisions": precisions_of(self.engine)}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Copy the batch to the device, enqueue the engine on the stream, synchronise, copy back."""
        torch = self._torch
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            x = torch.from_numpy(batch).to(self.device, self._in_dtype).contiguous()
            _check(self.context.set_input_shape(self._in, tuple(x.shape)), f"set_input_shape {tuple(x.shape)}")
            y = torch.empty(tuple(self.context.get_tensor_shape(self._out)), dtype=self._out_dtype, device=self.device)
            _check(self.context.set_tensor_address(self._in, x.data_ptr()), "set_tensor_address (input)")
            _check(self.context.set_tensor_address(self._out, y.data_ptr()), "set_tensor_address (output)")
            _check(self.context.execute_async_v3(self.stream.cuda_stream), "execute_async_v3")
            self.stream.synchronize()
            return y.float().cpu().numpy()


def build_engine(onnx_path: Path, dest_dir: Path, device: str, workspace_gb: float,
                 max_batch: int) -> tuple[Path, dict]:
    """Build (or reuse) a strongly typed engine from ``onnx_path`` for ``device``.

    Raises:
        ExportError: When TensorRT cannot parse the ONNX or build the engine.
    """
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    with torch.cuda.device(torch.device(device)):
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errs}")
        inp = network.get_input(0)
        shape = tuple(inp.shape)
        profile = None
        if any(d < 0 for d in shape):  # a dynamic input needs a profile; a static one must not get one
            c, h, w = (d if d > 0 else s for d, s in zip(shape[1:], (3, 640, 640)))
            profile = ((1, c, h, w), (1, c, h, w), (max_batch, c, h, w))
        ident = gpu_identity(device)
        key = hashlib.sha256("|".join([hashlib.sha256(onnx_path.read_bytes()).hexdigest(), trt.__version__,
                                       ident["gpu"], ident["compute_capability"], str(profile),
                                       str(workspace_gb)]).encode()).hexdigest()[:16]
        engine = dest_dir / f"model_{key}.engine"
        info = {"engine_key": key, "tensorrt": trt.__version__, "profile": profile, **ident,
                "network": "strongly typed", "onnx": onnx_path.name}
        if engine.is_file():
            return engine, info | {"cached": True}
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector then names layer precisions
        if profile:
            p = builder.create_optimization_profile()
            p.set_shape(inp.name, *profile)
            config.add_optimization_profile(p)
        blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ExportError("TensorRT failed to build the engine (see the TensorRT log above)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = engine.with_suffix(".partial")
    tmp.write_bytes(bytes(blob))
    tmp.replace(engine)
    return engine, info


@register
class TensorRtBackend(Backend):
    """TensorRT engines on an NVIDIA GPU, built from an FP16 or a Q/DQ INT8 ONNX."""

    name = "tensorrt"
    precisions = ("fp16", "int8")
    devices = ("cuda",)
    install_hint = INSTALL_HINT
    libraries = ("tensorrt", "onnxruntime")
    style = Style(color="#2ca02c")
    options = {
        "max_batch": OptionSpec(int, 32, None, "largest batch of a dynamic input's optimisation profile", minimum=1),
        "workspace_gb": OptionSpec(float, 4.0, None, "builder workspace", minimum=0.1),
        "calibration_images": CALIBRATION_IMAGES,
        **SCOPE_OPTIONS,
        # an FP16 or Q/DQ INT8 ONNX built as it is (a bundle from 'yoloq export', a QAT export)
        "onnx": OptionSpec(str, None, None, "the ONNX to build, used as it is (no export, no calibration)"),
    }

    def version(self) -> str:
        try:
            import tensorrt
        except (ImportError, OSError):
            raise BackendUnavailable(f"TensorRT is not installed ({INSTALL_HINT})") from None
        if not hasattr(tensorrt, "Builder"):
            raise BackendUnavailable(f"the installed tensorrt package is runtime-only and cannot build engines "
                                     f"({INSTALL_HINT})")
        major = int(str(tensorrt.__version__).split(".")[0])
        if major < MIN_MAJOR:
            raise BackendUnavailable(f"TensorRT {tensorrt.__version__} is too old: yoloq builds strongly typed "
                                     f"networks from Q/DQ ONNX, which needs TensorRT >= {MIN_MAJOR}")
        return tensorrt.__version__

    def check(self, variant, source) -> None:  # noqa: ANN001 - see Backend.check
        import torch

        if not torch.cuda.is_available():
            raise HardwareMissing(f"no CUDA device here for {variant.label} ({INSTALL_HINT}); "
                                     f"'yoloq export' writes its ONNX and a trtexec line for the device")
        super().check(variant, source)

    def deployable(self, ctx: ExportContext) -> Artifact:
        """The ONNX TensorRT builds (FP16, or Q/DQ INT8 calibrated here): no GPU or TensorRT needed."""
        ort = OnnxRuntimeBackend()
        given = ctx.variant.options.get("onnx")
        if given:
            if not Path(given).is_file():
                raise ExportError(f"options.onnx: {given} is not a file")
            return Artifact(Path(given), self.name, ctx.variant.precision,
                            {"quantizer": f"given ONNX {Path(given).name}"})
        fp32 = ort.fp32_graph(ctx)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        if ctx.variant.precision == "fp16":
            return Artifact(fp16_onnx(fp32, ctx.workdir / "model_fp16.onnx"), self.name, "fp16",
                            {"quantizer": "onnxruntime float16 converter (float I/O)"})
        # ONNX Runtime's INT8 defaults, this variant's calibration and scope, TensorRT's Q/DQ form
        options = {**{k: spec.default for k, spec in ort.options.items()}, **ctx.variant.options, "target": "tensorrt"}
        art = ort.quantize(dataclasses.replace(ctx, variant=dataclasses.replace(ctx.variant, options=options)), fp32)
        graph = "Q/DQ INT8 ONNX for TensorRT's strongly typed builder (symmetric int8, bias float)"
        return Artifact(art.path, self.name, "int8", {**art.info, "graph": graph})

    def deploy_notes(self, model_file: str) -> tuple[dict[str, Any], list[str]]:
        engine = Path(model_file).with_suffix(".engine").name
        return {"onnx": model_file}, [
            "Build the engine on the device itself (engines are specific to their GPU and TensorRT version;",
            "TensorRT >= 10, JetPack 6 or newer on a Jetson). The precision is in the ONNX, so the network is",
            "strongly typed: no `--fp16`/`--int8` flags, no calibrator.", "", "```bash",
            f"trtexec --onnx={model_file} --stronglyTyped --saveEngine={engine}", "```", "",
            "yoloq builds the same strongly typed engine from that exact ONNX (nothing re-calibrated) when it",
            "evaluates and times it below."]

    def export(self, ctx: ExportContext) -> Artifact:
        onnx = self.deployable(ctx)
        with step(f"build {ctx.variant.label} engine"):
            engine, info = build_engine(Path(onnx.path), ctx.workdir, ctx.variant.device, ctx.option("workspace_gb"),
                                        ctx.option("max_batch"))
        return Artifact(engine, self.name, ctx.variant.precision, {**onnx.info, **info})

    def load(self, artifact: Artifact, threads: int, device: str = "cuda:0") -> TrtRuntime:
        rt = TrtRuntime(Path(artifact.path), device if device.startswith("cuda") else "cuda:0")
        counts = rt.info["layer_precisions"]
        rt.info["precision_ran"] = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) \
            or artifact.precision
        return rt

