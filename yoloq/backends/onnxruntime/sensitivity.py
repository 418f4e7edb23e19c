"""ONNX Runtime layer sensitivity: the error each block (or layer) adds when it alone is quantized to INT8.

Measured with ONNX Runtime's quantizer on calibration (train) images, never evaluation images:
calibrate once (ranges cached), then for each group quantize only that group's nodes, run the
model, and compare its raw head output with FP32 as SQNR (signal-to-quantization-noise, dB; lower
means the group hurts more). Boxes are divided by the input size so boxes and scores weigh alike.
The ranking names what to keep in float (``float_nodes`` / ``float_patterns`` in a variant), and
drives accuracy control.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from yoloq.backends.base import GroupError
from yoloq.backends.onnxruntime.quantize import quantize_file


def block_of(name: str) -> str | None:
    """The block of an Ultralytics node or tensor name: ``model.K`` (the head by branch: ``model.23/cv2.0``)."""
    m = re.match(r"^/?(model\.\d+)/(cv[23]\.\d+|one2one_cv[23]\.\d+|dfl)?", name)
    return None if m is None else m.group(1) + (f"/{m.group(2)}" if m.group(2) else "")


def groups_of(onnx_path: Path, granularity: str = "block") -> dict[str, list[str]]:
    """Group an Ultralytics ONNX graph's nodes by block (``/model.K/``, the head by branch) or by conv layer."""
    import onnx

    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    groups: dict[str, list[str]] = {}
    for n in nodes:
        if granularity == "layer":
            if n.op_type == "Conv":
                groups[n.name] = [n.name]
            continue
        key = block_of(n.name)
        if key is not None:
            groups.setdefault(key, []).append(n.name)
    return groups


def block_pattern(group: str) -> str:
    """The node-name regular expression of one :func:`groups_of` block (``model.10``, ``model.23/cv2.0``): the
    same nodes the grouping puts in it, written as a ``float_patterns`` entry."""
    block, _, branch = group.partition("/")
    if branch:
        return rf"^/?{re.escape(block)}/{re.escape(branch)}(?!\d)"
    return rf"^/?{re.escape(block)}/(?!cv[23]\.\d|one2one_cv[23]\.\d|dfl)"


def _normalise(y: np.ndarray, imgsz: int) -> np.ndarray:
    y = y.astype(np.float64).copy()
    if y.ndim == 3 and y.shape[1] < y.shape[2]:
        y[:, :4] /= imgsz
    return y


def session_outputs(path: Path, batches: list[np.ndarray], imgsz: int, threads: int) -> np.ndarray:
    """Run an ONNX model on ``batches`` and return the stacked, box-normalised raw outputs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([_normalise(s.run(None, {name: x})[0], imgsz) for x in batches])


def rank_groups(prep: Path, options: Mapping[str, Any], cache: Path, batches: list[np.ndarray], imgsz: int,
                threads: int, granularity: str = "block", skip: set[str] | None = None) -> list[GroupError]:
    """Quantize each group alone with the cached ranges and rank by output SQNR against FP32 (worst first)."""
    from yoloq.progress import bar

    reference = session_outputs(prep, batches, imgsz, threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="yoloq-rank-") as tmp:
        out = Path(tmp) / "q.onnx"
        for name, nodes in bar(list(groups_of(prep, granularity).items()), desc="  sensitivity"):
            nodes = [n for n in nodes if n not in (skip or set())]
            if not nodes:
                continue
            quantize_file(prep, out, options, cache, only=nodes)
            y = session_outputs(out, batches, imgsz, threads)
            noise, signal = float(((reference - y) ** 2).sum()), float((reference ** 2).sum())
            db = 10 * np.log10(signal / noise) if noise > 0 else float("inf")
            results.append(GroupError(name, tuple(nodes), db, (noise / signal) ** 0.5))
    return sorted(results, key=lambda g: g.sqnr_db)
