"""TensorRT: FP16 and INT8 engines built from the FP32 ONNX, run through the TensorRT Python API on CUDA.

INT8 uses TensorRT's entropy calibrator (``IInt8EntropyCalibrator2``) fed with yoloq's calibration
images; the calibration cache and the engine are kept in the variant's folder under a key made of the
GPU, the TensorRT version, the precision, the input shape and the calibration list's hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.backends.base import Artifact, Backend, ExportContext, OptionSpec, Style
from yoloq.backends.onnx_base import base_onnx
from yoloq.backends.registry import register
from yoloq.errors import BackendUnavailable, ExportError
from yoloq.progress import step

INSTALL_HINT = ("TensorRT needs an NVIDIA GPU and the full builder: pip install tensorrt-cu12 "
                "(served from NVIDIA's index, pypi.nvidia.com), or NVIDIA's TensorRT container")


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0).replace(" ", "_")


class TrtRuntime:
    """A deserialised engine with device buffers held as torch CUDA tensors."""

    def __init__(self, engine_path: Path, device: str) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        self.device = torch.device(device)
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._in = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._out = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = torch.cuda.Stream(self.device)
        self.info: dict[str, Any] = {"device": str(self.device), "tensorrt": trt.__version__}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Copy the batch to the GPU, enqueue the engine, synchronise, copy the output back."""
        torch = self._torch
        x = torch.from_numpy(batch).to(self.device, non_blocking=False).contiguous()
        self.context.set_input_shape(self._in, tuple(x.shape))
        shape = tuple(self.context.get_tensor_shape(self._out))
        y = torch.empty(shape, dtype=torch.float32, device=self.device)
        self.context.set_tensor_address(self._in, x.data_ptr())
        self.context.set_tensor_address(self._out, y.data_ptr())
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return y.cpu().numpy()


def _calibrator(ctx: ExportContext, cache: Path) -> Any:
    import tensorrt as trt
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """Feeds yoloq's calibration images one at a time from a CUDA buffer."""

        def __init__(self) -> None:
            super().__init__()
            self._it = ctx.calibration.batches(ctx.imgsz, progress="  calibrating")
            self._buf: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            x = next(self._it, None)
            if x is None:
                return None
            self._buf = torch.from_numpy(x).cuda().contiguous()
            return [int(self._buf.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: bytes) -> None:
            cache.write_bytes(bytes(data))

    return EntropyCalibrator()


@register
class TensorRtBackend(Backend):
    """TensorRT engines on an NVIDIA GPU."""

    name = "tensorrt"
    precisions = ("fp16", "int8")
    devices = ("cuda",)
    install_hint = INSTALL_HINT
    libraries = ("tensorrt",)
    style = Style(color="#2ca02c")
    options = {
        "max_batch": OptionSpec(int, 32, None, "largest batch the engine's optimisation profile accepts"),
        "workspace_gb": OptionSpec(float, 4.0, None, "builder workspace"),
    }

    def version(self) -> str:
        try:
            import tensorrt
        except (ImportError, OSError):
            raise BackendUnavailable(f"TensorRT is not installed ({INSTALL_HINT})") from None
        if not hasattr(tensorrt, "Builder"):
            raise BackendUnavailable(f"the installed tensorrt package is runtime-only and cannot build engines "
                                     f"({INSTALL_HINT})")
        return tensorrt.__version__

    def check(self, variant, source) -> None:  # noqa: ANN001 - see Backend.check
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable(f"no CUDA device here for {variant.label} ({INSTALL_HINT})")
        super().check(variant, source)

    def export(self, ctx: ExportContext) -> Artifact:
        import tensorrt as trt

        onnx_path = base_onnx(ctx.source, ctx.imgsz, ctx.workdir.parent, dynamic=True)
        p = ctx.variant.precision
        key = hashlib.sha256("|".join([_gpu_name(), trt.__version__, p, str(ctx.imgsz),
                                       str(ctx.option("max_batch")), ctx.source.sha256,
                                       ctx.calibration.sha256 if p == "int8" else ""]).encode()).hexdigest()[:12]
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        engine = ctx.workdir / f"model_{p}_{key}.engine"
        info = {"engine_key": key, "gpu": _gpu_name(), "tensorrt": trt.__version__,
                "int8_calibration": "IInt8EntropyCalibrator2" if p == "int8" else None}
        if engine.is_file():
            return Artifact(engine, self.name, p, info | {"cached": True})
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT could not parse the ONNX model: {errs}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(ctx.option("workspace_gb") * (1 << 30)))
        profile = builder.create_optimization_profile()
        s = ctx.imgsz
        name = network.get_input(0).name
        profile.set_shape(name, (1, 3, s, s), (1, 3, s, s), (ctx.option("max_batch"), 3, s, s))
        config.add_optimization_profile(profile)
        config.set_flag(trt.BuilderFlag.FP16)
        if p == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.set_calibration_profile(profile)
            config.int8_calibrator = _calibrator(ctx, ctx.workdir / f"calib_{key}.cache")
        with step(f"build {ctx.variant.label} engine"):
            blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise ExportError(f"TensorRT failed to build the {p} engine (see the TensorRT log above)")
        tmp = engine.with_suffix(".partial")
        tmp.write_bytes(bytes(blob))
        tmp.replace(engine)
        return Artifact(engine, self.name, p, info)

    def load(self, artifact: Artifact, threads: int, device: str = "cuda:0") -> TrtRuntime:
        rt = TrtRuntime(Path(artifact.path), device if device.startswith("cuda") else "cuda:0")
        rt.info["precision_ran"] = artifact.precision
        return rt
