"""Importing yoloq (and reading configs) loads no heavy runtime."""

import subprocess
import sys

HEAVY = ("torch", "onnxruntime", "openvino", "nncf", "tensorflow", "ai_edge_litert", "tensorrt", "ultralytics")


def test_import_loads_no_heavy_runtime():
    code = ("import sys, yoloq, yoloq.config, yoloq.backends.registry as r; r.available_formats(); "
            "from yoloq.config import load_config; r.resolve_config(load_config('configs/default.yaml')); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
