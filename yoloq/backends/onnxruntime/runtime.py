"""An ONNX Runtime session with explicit thread settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class OrtRuntime:
    """An ``InferenceSession`` with explicit thread settings."""

    def __init__(self, path: Path, threads: int, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=so,
                                            providers=providers or ["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self._input = inp.name
        self._dtype = np.float16 if "float16" in inp.type else np.float32
        self.info: dict[str, Any] = {"providers": self.session.get_providers(), "threads": threads}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run the session on one NCHW batch."""
        return self.session.run(None, {self._input: batch.astype(self._dtype, copy=False)})[0]
