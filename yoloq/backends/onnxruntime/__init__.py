"""ONNX Runtime: FP32 and FP16 graphs, INT8 by static calibrated quantization (``onnxruntime.quantization``).

backend (the registered format), runtime (an ``InferenceSession``), quantize (``quantize_static`` over
yoloq's calibration images), graph (ONNX Runtime's graph fix-up), control (accuracy control),
sensitivity (per-group INT8 error).
"""

from yoloq.backends.onnxruntime.backend import OnnxRuntimeBackend
from yoloq.backends.onnxruntime.runtime import OrtRuntime

__all__ = ["OnnxRuntimeBackend", "OrtRuntime"]
