"""An ONNX Runtime session with explicit thread settings, its worker threads not spinning between runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def no_spinning(so: object) -> None:
    """Workers that sleep when a run ends. ONNX Runtime's default keeps them spinning on the cores
    (its "Thread management" docs: ``session.intra_op.allow_spinning``), which takes the CPU from the
    application's own letterbox and NMS and, with several sessions loaded (yoloq's side-by-side latency
    pass), from every other model: on the 2-core AMD EPYC amd-epyc-2c-acddd7 a LiteRT INT8 run took 14.6 ms beside
    a spinning ORT session and 9.7 ms beside a sleeping one (model only, 2026-11-23)."""
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # type: ignore[attr-defined]
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")  # type: ignore[attr-defined]


class OrtRuntime:
    """An ``InferenceSession`` with explicit thread settings, no spinning between runs."""

    def __init__(self, path: Path, threads: int, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        no_spinning(so)
        self.session = ort.InferenceSession(str(path), sess_options=so,
                                            providers=providers or ["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self._input = inp.name
        self._dtype = np.float16 if "float16" in inp.type else np.float32
        self.info: dict[str, Any] = {"providers": self.session.get_providers(), "threads": threads,
                                     "spinning": False}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run the session on one NCHW batch."""
        return self.session.run(None, {self._input: batch.astype(self._dtype, copy=False)})[0]
