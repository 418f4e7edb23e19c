"""Static INT8 quantization with ``onnxruntime.quantization`` over yoloq's calibration images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from yoloq.data.calibration import CalibrationSet


def calibration_reader(calibration: CalibrationSet, imgsz: int, input_name: str) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``calibration``'s images.

    It supports ``set_range`` so calibration can run in strides (bounded memory).
    """
    from onnxruntime.quantization import CalibrationDataReader

    images = calibration.images

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.set_range(0, len(images))

        def __len__(self) -> int:
            return len(images)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it = calibration.take_range(start_index, end_index).batches(imgsz)

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
        options: The variant's (resolved) options.
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


def calibrate(fp32: Path, workdir: Path, calibration: CalibrationSet, imgsz: int, options: Mapping[str, Any],
              out: Path, exclude: list[str] | None = None) -> tuple[Path, Path]:
    """Pre-process ``fp32`` and quantize it into ``out``, keeping the ranges cached.

    Returns:
        The pre-processed model and the range cache (callers delete them when done).
    """
    prep, cache = workdir / "model_prep.onnx", workdir / "ranges.json"
    input_name = prepare_model(fp32, prep)
    quantize_file(prep, out, options, calibration_reader(calibration, imgsz, input_name), cache, exclude)
    return prep, cache
