"""rknn-toolkit2's accuracy analysis read back: each layer's own INT8 error, ranked by block or layer."""

from __future__ import annotations

import re

import numpy as np

from yoloq.backends.base import GroupError, LayerRun


def layer_errors(text: str) -> list[tuple[str, str, float]]:
    """(op, tensor name, single-layer cosine) of each layer in the toolkit's ``error_analysis.txt``: the layer's
    own simulated INT8 output against float with float inputs (its error alone, not what it inherits)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^\[(\w+)\]\s+(\S+)\s+[-\d.]+\s*\|\s*[-\d.e+]+\s+([-\d.]+)\s*\|", line.strip())
        if m:
            out.append((m.group(1), m.group(2), float(m.group(3))))
    return out


def group_errors(layers: list[list[tuple[str, str, float]]], granularity: str) -> list[GroupError]:
    """Per block (``model.K``, the head by branch) or per conv layer, over images: the worst single-layer cosine
    as an SQNR (dB, from 1 - cos: the relative squared error of equal-norm outputs), worst first."""
    from yoloq.backends.onnxruntime.sensitivity import block_of

    worst: dict[str, tuple[float, set[str]]] = {}
    for per_image in layers:
        for op, name, cos in per_image:
            key = name if granularity == "layer" else block_of(name)
            if key is None or (granularity == "layer" and op != "Conv"):
                continue
            lo, names = worst.get(key, (1.0, set()))
            worst[key] = (min(lo, cos), names | {name})
    out = []
    for key, (cos, names) in worst.items():
        rel = max(2.0 * (1.0 - cos), 0.0)
        out.append(GroupError(key, tuple(sorted(names)), -10 * float(np.log10(rel)) if rel > 0 else float("inf"),
                              rel ** 0.5))
    return sorted(out, key=lambda g: g.sqnr_db)


def conv_macs(onnx_path) -> dict[str, int]:  # noqa: ANN001 - a path
    """Multiply-accumulates of each Conv of a static ONNX, by its output tensor name (output elements x input
    channels per group x kernel area)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    weights = {w.name: list(w.dims) for w in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "Conv" and n.input[1] in weights and n.output[0] in shapes:
            w = weights[n.input[1]]  # [out_ch, in_ch / group, kh, kw]
            out[n.output[0]] = int(np.prod(shapes[n.output[0]])) * int(np.prod(w[1:]))
    return out


def executed(layers: list[tuple[str, str, float]], macs: dict[str, int], precision: str,
             float16_blocks: list[str]) -> list[LayerRun]:
    """The NPU's layers as the toolkit's analysis lists them: a conversion it inserted, a layer of a block kept in
    float16, or the model's precision (int8, or fp16 for a float16 build)."""
    from yoloq.backends.onnxruntime.sensitivity import block_of

    out = []
    for op, name, _ in layers:
        if op == "Input":
            continue
        kind = "convert" if op == "exDataConvert" else "fp16" if block_of(name) in float16_blocks else precision
        out.append(LayerRun(name, f"{op} (NPU)", kind, None, macs.get(name, 0) if op == "Conv" else 0))
    return out
