"""Store a Q/DQ ONNX model's weights as integers: the QAT exporter writes float weights behind a
QuantizeLinear, so the file is as large as FP32 although every run quantizes them the same way.

Folding ``QuantizeLinear(constant float W)`` into its integer constant gives the INT8 file a user
ships (0.29x of FP32 for YOLO11n instead of 1.01x); the runtime graph, DequantizeLinear onward, is
unchanged, so outputs are the same.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _constants(graph) -> dict[str, np.ndarray]:  # noqa: ANN001 - an onnx GraphProto
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def quantize_constant(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear on a constant: float32 divide, round half to even, add the zero point, saturate."""
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    info = np.iinfo(zero.dtype)
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32)).astype(np.int64)  # a float32 divide, as ORT does
    q += zero.astype(np.int64)
    return np.clip(q, info.min, info.max).astype(zero.dtype)


def fold_weight_quantizers(path: Path) -> int:
    """Rewrite ``path`` in place with every constant-input QuantizeLinear folded; returns how many."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    consts = _constants(graph)
    folded = []
    for n in graph.node:
        if n.op_type != "QuantizeLinear" or len(n.input) < 3 or not all(i in consts for i in n.input[:3]):
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        q = quantize_constant(consts[n.input[0]], consts[n.input[1]], consts[n.input[2]], axis)
        graph.initializer.append(numpy_helper.from_array(q, n.output[0]))
        folded.append(n)
    for n in folded:
        graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output} | {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return len(folded)


def seven_bit_weights(src: Path, dst: Path) -> int:
    """Write ``src`` to ``dst`` with every symmetric int8 weight behind a DequantizeLinear on 7 bits: the integers
    halved (round half to even, clipped to [-64, 63]) and the scales doubled, so each weight keeps its value to
    within one 7-bit step. Returns how many weights changed.

    NNCF's ``overflow_fix`` for a model yoloq has not quantized itself: CPUs without VNNI multiply-add u8
    activations and s8 weights in pairs into int16 (``vpmaddubsw``), which saturates once |w| passes 64, and a
    QAT model's weights use the whole int8 range (OpenVINO's AVX2 kernels on the QAT YOLO11n: mAP50-95 0.044).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    changed = 0
    for n in graph.node:
        if n.op_type != "DequantizeLinear" or len(n.input) < 2 or n.input[0] not in inits or n.input[1] not in inits:
            continue
        q = numpy_helper.to_array(inits[n.input[0]])
        zero = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] in inits else None
        if q.dtype != np.int8 or q.ndim < 2 or (zero is not None and np.any(zero != 0)):
            continue  # weights only (activations are not constants), symmetric only
        scale = numpy_helper.to_array(inits[n.input[1]])
        seven = np.clip(np.rint(q / 2), -64, 63).astype(np.int8)
        inits[n.input[0]].CopyFrom(numpy_helper.from_array(seven, n.input[0]))
        inits[n.input[1]].CopyFrom(numpy_helper.from_array((scale * 2).astype(scale.dtype), n.input[1]))
        changed += 1
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return changed
