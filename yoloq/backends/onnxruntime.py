"""ONNX Runtime: FP32 and FP16 graphs, INT8 by static calibrated quantization (onnxruntime.quantization)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from yoloq.backends._export import base_onnx
from yoloq.backends._ort_graph import ort_graph
from yoloq.backends._scope import CONTROL_OPTIONS, PREQUANTIZED, SCOPE_OPTIONS, float_scope
from yoloq.backends.base import Artifact, Backend, ExportContext, OptionSpec
from yoloq.backends.registry import register
from yoloq.errors import BackendUnavailable, ExportError, YoloqError
from yoloq.progress import step


class OrtRuntime:
    """An ``InferenceSession`` with explicit thread settings."""

    def __init__(self, path: Path, threads: int, providers: list[str]) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        inp = self.session.get_inputs()[0]
        self._input = inp.name
        self._dtype = np.float16 if "float16" in inp.type else np.float32
        self.info: dict[str, Any] = {"providers": self.session.get_providers(), "threads": threads}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run the session on one NCHW batch."""
        return self.session.run(None, {self._input: batch.astype(self._dtype, copy=False)})[0]


def _reader(ctx: ExportContext, input_name: str, limit: int | None) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over yoloq's calibration images.

    It supports ``set_range`` so MinMax calibration can run in strides (bounded memory).
    """
    from onnxruntime.quantization import CalibrationDataReader

    from yoloq.data.calibration import CalibrationSet

    images = ctx.calibration.images[:limit] if limit else ctx.calibration.images

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.set_range(0, len(images))

        def __len__(self) -> int:
            return len(images)

        def set_range(self, start_index: int, end_index: int) -> None:
            part = CalibrationSet(images[start_index:end_index], (), 0, 0, "")
            self._it = part.batches(ctx.imgsz)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

        def rewind(self) -> None:
            self.set_range(0, len(images))

    return Reader()


def prepare_model(fp32: Path, prep: Path) -> str:
    """ONNX Runtime's pre-processing for quantization (shape inference, folding); returns the input name."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
    return onnx.load(str(prep), load_external_data=False).graph.input[0].name


def quantize_file(prep: Path, out: Path, options: Mapping[str, Any], reader: Any | None, cache: Path | None,
                  exclude: list[str] | None = None, only: list[str] | None = None) -> None:
    """``quantize_static`` with a variant's options.

    Args:
        prep: The pre-processed FP32 model.
        out: Where the INT8 model goes.
        options: The variant's (validated) options.
        reader: A calibration reader, or None to reuse the ranges cached at ``cache``.
        cache: ONNX Runtime's calibration cache (ranges computed once, reused by later calls).
        exclude: Node names left in float.
        only: When given, quantize only these nodes.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[options["calibrate_method"]]
    s8 = options["activation_type"] == "int8"
    extra: dict[str, Any] = {"ActivationSymmetric": s8}
    if reader is not None:  # ranges/histograms merged stride by stride: bounded memory for every method
        extra["CalibStridedMinMax"] = _stride(len(reader))
    quantize_static(str(prep), str(out), reader,
                    quant_format=QuantFormat.QDQ if options["quant_format"] == "qdq" else QuantFormat.QOperator,
                    per_channel=options["per_channel"], activation_type=QuantType.QInt8 if s8 else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=exclude or [],
                    nodes_to_quantize=only or [], extra_options=extra,
                    calibration_cache_path=str(cache) if cache else None)


def _stride(n: int, most: int = 16) -> int:
    """The largest divisor of ``n`` not above ``most`` (ONNX Runtime's strided MinMax needs one)."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


@register
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on the CPU (and CUDA where onnxruntime-gpu is installed)."""

    name = "onnxruntime"
    precisions = ("fp32", "fp16", "int8")
    devices = ("cpu", "cuda")
    install_hint = "pip install onnxruntime (onnxruntime-gpu for CUDA)"
    options = {
        # same kernels at run time (ORT fuses QDQ into QLinear ops), but the QOperator file carries no
        # Q/DQ node pairs: YOLO11n 3.16 MB (0.29x FP32) against 3.36 MB (0.31x) for QDQ
        "quant_format": OptionSpec(str, "qoperator", ("qdq", "qoperator"), "INT8 graph form"),
        "per_channel": OptionSpec(bool, True, None, "per-channel weight scales"),
        # percentile (99.999%) kept 100.6% of FP32 mAP50-95 on coco-mini where MinMax kept 97.7% (int8 sweep)
        "calibrate_method": OptionSpec(str, "percentile", ("minmax", "entropy", "percentile"), "activation ranges"),
        "activation_type": OptionSpec(str, "uint8", ("uint8", "int8"), "activation integer type"),
        "calibration_images": OptionSpec(int, None, None, "use only the first N calibration images"),
        **SCOPE_OPTIONS,
        **CONTROL_OPTIONS,
        **PREQUANTIZED,
    }

    def version(self) -> str:
        try:
            import onnxruntime
        except ImportError:
            raise BackendUnavailable(f"onnxruntime is not installed ({self.install_hint})") from None
        return onnxruntime.__version__

    def check(self, variant, source) -> None:  # noqa: ANN001 - see Backend.check
        super().check(variant, source)
        if variant.device.startswith("cuda"):
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("onnxruntime has no CUDA execution provider here "
                                         "(needs an NVIDIA GPU and pip install onnxruntime-gpu)")

    def export(self, ctx: ExportContext) -> Artifact:
        if ctx.option("prequantized"):
            qat = ort_graph(Path(ctx.option("prequantized")), ctx.workdir)
            return Artifact(qat, self.name, ctx.variant.precision,
                            {"quantizer": "quantization-aware training (Ultralytics + ModelOpt Q/DQ)"})
        fp32 = ort_graph(base_onnx(ctx.source, ctx.imgsz, ctx.workdir.parent), ctx.workdir.parent / "_base")
        p = ctx.variant.precision
        if p == "fp32":
            return Artifact(fp32, self.name, p)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        if p == "fp16":
            import onnx
            from onnxruntime.transformers import float16

            out = ctx.workdir / "model_fp16.onnx"
            with step(f"export {ctx.variant.label}"):
                m = float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
                onnx.save(m, str(out))
            return Artifact(out, self.name, p)
        return self._quantize(ctx, fp32)

    def _quantize(self, ctx: ExportContext, fp32: Path) -> Artifact:
        prep = ctx.workdir / "model_prep.onnx"
        out = ctx.workdir / "model_int8.onnx"
        cache = ctx.workdir / "ranges.json"
        exclude = float_scope(fp32, ctx.variant.options)
        info: dict[str, Any] = {"quantizer": "onnxruntime.quantization.quantize_static",
                                "settings": {k: ctx.option(k) for k in self.options}}
        with step(f"quantize {ctx.variant.label}"):
            try:
                input_name = prepare_model(fp32, prep)
                reader = _reader(ctx, input_name, ctx.option("calibration_images"))
                quantize_file(prep, out, ctx.variant.options, reader, cache, exclude)
                if ctx.option("accuracy_control"):
                    from yoloq.backends._ort_control import control

                    exclude, info["accuracy_control"] = control(ctx, prep, out, cache, exclude)
            except YoloqError:
                raise
            except Exception as e:  # noqa: BLE001 - the quantizer raises many kinds
                raise ExportError(f"onnxruntime INT8 quantization failed: {type(e).__name__}: {e}") from e
            finally:
                prep.unlink(missing_ok=True)
                cache.unlink(missing_ok=True)
        return Artifact(out, self.name, "int8", info | {"kept_float": exclude})

    def load(self, artifact: Artifact, threads: int, device: str = "cpu") -> OrtRuntime:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") \
            else ["CPUExecutionProvider"]
        rt = OrtRuntime(artifact.path, threads, providers)
        rt.info["precision_ran"] = artifact.precision
        return rt
