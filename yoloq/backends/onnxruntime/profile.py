"""What ONNX Runtime executes: a profiling run's per-node kernel times, types and shapes (hence MACs)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from yoloq.backends.base import LayerRun
from yoloq.backends.onnxruntime.runtime import no_spinning

INT8_OPS = ("QLinear", "ConvInteger", "MatMulInteger", "QGemm", "QAttention")
CONVERT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast", "MemcpyToHost",
               "MemcpyFromHost", "Reorder")
_DTYPES = {"float": "fp32", "float16": "fp16", "uint8": "int8", "int8": "int8"}


def _shape(entry: object) -> list[int]:
    return [int(d) for d in next(iter(entry.values()))] if isinstance(entry, dict) and entry else []


def weight_dims(path: Path) -> dict[str, list[int]]:
    """Each conv node's weight dims, from the file (ONNX Runtime pre-packs int8 weights, so its profiler
    no longer shows them)."""
    import onnx

    g = onnx.load(str(path)).graph
    dims = {t.name: list(t.dims) for t in g.initializer}
    out = {}
    for n in g.node:
        w = n.input[3] if n.op_type == "QLinearConv" else n.input[1] if n.op_type == "Conv" else ""
        if w in dims:
            out[n.name] = dims[w]
    return out


def macs_of(op: str, args: dict, weights: list[int] | None = None) -> int:
    """Multiply-accumulates of one executed conv or matmul, from the shapes the profiler saw."""
    ins, outs = args.get("input_type_shape") or [], args.get("output_type_shape") or []
    y = _shape(outs[0]) if outs else []
    if not y:
        return 0
    if "Conv" in op:
        w = weights or (_shape(ins[1]) if len(ins) > 1 and op in ("Conv", "FusedConv") else [])
        return int(np.prod(y[1:]) * np.prod(w[1:])) if len(w) == 4 else 0
    if op in ("MatMul", "QLinearMatMul", "MatMulInteger", "FusedMatMul"):
        a = _shape(ins[0]) if ins else []
        return int(np.prod(y) * a[-1]) if a else 0
    return 0


def _precision(op: str, args: dict) -> str:
    if op.startswith(INT8_OPS):
        return "int8"
    if op in CONVERT_OPS:
        return "convert"
    shapes = args.get("output_type_shape") or [{}]
    kind = next(iter(shapes[0]), "float") if shapes and isinstance(shapes[0], dict) else "float"
    return _DTYPES.get(kind, "fp32" if "float" in kind else kind)


def profile(path: Path, batch: np.ndarray, threads: int, runs: int = 5) -> list[LayerRun]:
    """Profile ``runs`` inferences (after one warm-up) and return each executed node, with its MACs."""
    import onnxruntime as ort

    weights = weight_dims(path)
    with tempfile.TemporaryDirectory(prefix="yoloq-ortprof-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        no_spinning(so)  # as the timed runtime
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        for _ in range(runs + 1):
            s.run(None, {name: batch})
        events = json.loads(Path(s.end_profiling()).read_text())
    times: dict[str, list[float]] = {}
    ops: dict[str, tuple[str, dict]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        times.setdefault(node, []).append(e["dur"] / 1000.0)
        ops[node] = (e.get("args", {}).get("op_name", "?"), e.get("args", {}))
    out = []
    for node, ts in times.items():
        op, args = ops[node]
        per_run = float(np.mean(ts[1:] if len(ts) > 1 else ts))  # the first inference is the warm-up
        clean = re.sub(r"_token_\d+$", "", node)
        out.append(LayerRun(clean, op, _precision(op, args), per_run, macs_of(op, args, weights.get(clean))))
    return out
