"""ONNX Runtime INT8 recovered by distillation from the FP32 model through ONNX Runtime's own arithmetic.

The quantized file says what ONNX Runtime computes for each int8 convolution: the input's scale and zero point
(uint8, asymmetric, or int8), the per-channel weight scales, the output's scale and zero point (a QLinearConv's
output is requantized before the activation reads it), and in a QOperator file the SiLU's sigmoid and product
(QLinearSigmoid, QLinearMul), each requantized too. :func:`grids` reads those, :func:`yoloq.recover.distill.distill`
trains the fused PyTorch model's convolutions through fake quantizers with exactly those grids, and :func:`write`
puts the learned weights back into the same file as its int8 integers (on the file's own weight scales) and its
int32 biases (on input scale x weight scale, as ONNX Runtime's quantizer puts them): the graph, every range and every
float layer stay as they were. QOperator and Q/DQ files both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.errors import ExportError
from yoloq.recover.distill import Grid

_WEIGHT = ".weight_quantized"


@dataclass(frozen=True)
class QConv:
    """One int8 convolution of the file: its PyTorch module name and the initializers that hold its arithmetic."""

    module: str
    weight: str  # int8 integers [out, in, kh, kw]
    weight_scale: str  # [out]
    bias: str | None  # int32 integers (``bias_int``) or float
    bias_int: bool
    x_scale: str
    x_zero: str | None
    y_scale: str | None  # None: the output stays float (a Conv whose output no QuantizeLinear reads)
    y_zero: str | None
    silu: tuple[str, str, str, str] | None = None  # its SiLU's sigmoid scale, zero point, product scale, zero point


def convs(model: Any) -> list[QConv]:
    """The int8 convolutions of a quantized ONNX model (QLinearConv, or Conv between DequantizeLinear and
    QuantizeLinear) whose weights are initializers named as Ultralytics' export names them (``<module>.weight``)."""
    init = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = []
    for n in model.graph.node:
        if n.op_type == "QLinearConv":
            ins = list(n.input) + [""] * (9 - len(n.input))
            out.append(QConv("", ins[3], ins[4], ins[8] or None, True, ins[1], ins[2] or None, ins[6],
                             ins[7] or None, _qlinear_silu(n.output[0], readers)))
            continue
        dq_x, dq_w = (producer.get(i) for i in n.input[:2]) if n.op_type == "Conv" else (None, None)
        if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear" \
                or dq_w.input[0] not in init:
            continue
        q_y = [r for r in readers.get(n.output[0], []) if r.op_type == "QuantizeLinear"]
        bias, bias_int = (n.input[2], False) if len(n.input) > 2 and n.input[2] else (None, False)
        dq_b = producer.get(bias) if bias else None
        if dq_b is not None and dq_b.op_type == "DequantizeLinear":
            bias, bias_int = dq_b.input[0], True
        out.append(QConv("", dq_w.input[0], dq_w.input[1], bias, bias_int, dq_x.input[1],
                         dq_x.input[2] if len(dq_x.input) > 2 else None,
                         q_y[0].input[1] if q_y else None, q_y[0].input[2] if q_y and len(q_y[0].input) > 2 else None))
    named = []
    for c in out:
        if not c.weight.endswith(_WEIGHT):
            raise ExportError(f"onnxruntime distillation: weight {c.weight!r} is not named <module>.weight as "
                              f"Ultralytics' export names it; distill a model exported by Ultralytics")
        named.append(replace(c, module=c.weight[: -len(_WEIGHT)]))
    return named


def _qlinear_silu(y: str, readers: dict[str, list[Any]]) -> tuple[str, str, str, str] | None:
    """The quantization of the SiLU that reads a QLinearConv's output ``y`` (QLinearSigmoid, then QLinearMul of
    ``y`` and the sigmoid), None where none does."""
    sig = [r for r in readers.get(y, []) if r.op_type == "QLinearSigmoid"]
    mul = [r for r in readers.get(sig[0].output[0], []) if r.op_type == "QLinearMul" and y in r.input] if sig else []
    if not mul or len(sig[0].input) < 5 or len(mul[0].input) < 8:
        return None
    return sig[0].input[3], sig[0].input[4], mul[0].input[6], mul[0].input[7]


def _bounds(zero: np.ndarray) -> tuple[int, int]:
    """The integers x / scale may take before the zero point is added: the type's range less the zero point."""
    info = np.iinfo(zero.dtype)
    z = int(zero.ravel()[0]) if zero.size else 0
    return info.min - z, info.max - z


def grids(model: Any, qmax: int) -> tuple[list[QConv], dict[str, Grid]]:
    """Each int8 convolution (``model`` loaded by onnx) and its arithmetic as a distillation grid, by module name
    (``qmax``: the largest weight integer, 127, or 64 with 7-bit weights)."""
    from onnx import numpy_helper

    values = {i.name: i for i in model.graph.initializer}

    def arr(name: str | None) -> np.ndarray | None:
        return None if not name else numpy_helper.to_array(values[name])

    found = convs(model)
    out = {}
    for c in found:
        # an omitted zero point is ONNX's default: uint8 0
        zx = arr(c.x_zero) if c.x_zero else np.zeros(1, np.uint8)
        ys = float(arr(c.y_scale)) if c.y_scale else 0.0
        zy = arr(c.y_zero) if c.y_zero else np.zeros(1, np.uint8)
        silu = None
        if c.silu is not None and c.module.endswith(".conv"):  # an Ultralytics Conv's convolution and its SiLU
            silu = (1.0 / float(arr(c.silu[0])), _bounds(arr(c.silu[1])), 1.0 / float(arr(c.silu[2])),
                    _bounds(arr(c.silu[3])))
        out[c.module] = Grid(1.0 / arr(c.weight_scale).astype(np.float64).reshape(-1), qmax,
                             1.0 / float(arr(c.x_scale)), 0.0, _bounds(zx), 1.0 / ys if ys else 0.0, _bounds(zy),
                             silu)
    return found, out


def write(path: Path, found: list[QConv], learned: dict[str, Any], qmax: int) -> None:
    """The learned float weights and biases (by module name) into the quantized file at ``path``, as its integers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    values = {i.name: i for i in model.graph.initializer}

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(values[name])

    def put(name: str, a: np.ndarray) -> None:
        values[name].CopyFrom(numpy_helper.from_array(a, name))

    for c in found:
        w, b, _ = learned[c.module]
        # in float32, as ONNX Runtime's quantizer divides: the weights it rounded are rounded the same way here
        ws = arr(c.weight_scale).astype(np.float32).reshape(-1, *([1] * (w.ndim - 1)))
        put(c.weight, np.clip(np.round(w.astype(np.float32) / ws), -qmax, qmax).astype(arr(c.weight).dtype))
        if c.bias is not None and b is not None:
            if c.bias_int:  # ONNX Runtime's bias: int32 on input scale x weight scale
                scale = arr(c.x_scale).astype(np.float32) * arr(c.weight_scale).astype(np.float32).reshape(-1)
                put(c.bias, np.round(b.astype(np.float32) / scale).astype(np.int32))
            else:
                put(c.bias, b.astype(arr(c.bias).dtype))
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)  # readers see the old file or the new one
