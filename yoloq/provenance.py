"""Where a number came from: the machine and the library versions."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

PACKAGES = ("yoloq", "ultralytics", "torch", "onnx", "onnxslim", "onnxruntime", "openvino", "nncf", "ai-edge-litert",
            "litert-torch", "ai-edge-quantizer", "tensorrt", "pycocotools", "numpy", "opencv-python")


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Installed versions of the libraries that shape results (absent ones are left out)."""
    out = {}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            continue
    return out


@lru_cache(maxsize=1)
def machine() -> dict[str, Any]:
    """CPU model, core count and the instruction sets INT8/BF16 speed depends on."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA install just means no GPU is recorded
        gpu = None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "avx512_vnni": "avx512_vnni" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": any(f.startswith("amx") for f in flags),
        "gpu": gpu,
    }
