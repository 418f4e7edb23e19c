"""MCT's quantizer ops as the standard ONNX ops that compute the same float32 arithmetic.

MCT exports its fake quantizers as custom ops implemented in Python (onnxruntime-extensions): every activation
quantizer copies its tensor into numpy and back, which makes the simulated IMX500 model ~20x slower than its
arithmetic (7 s an image at 640 on a 2-core Xeon, 95% of it in those copies). The same arithmetic in standard ops:

- a weights quantizer (symmetric or power-of-two) has constant inputs: its output is computed once, by MCT's own
  numpy function, and stored as an initializer;
- an activation quantizer (symmetric or power-of-two) is ``round(clip(x, lo, hi) / scale) * scale`` in float32
  (``lo``, ``hi``, ``scale`` from its threshold, signedness and bits, as MCT computes them): Clip, Div, Round
  (half to even, as numpy) and Mul.

Other custom ops (Sony's NMS, any quantizer kind not listed) stay as they are. The rewrite is used only after it has
given MCT's own ops' outputs bit for bit on real images (:func:`identical`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from yoloq.backends.base import LayerRun

DOMAIN = "mct_quantizers"
WEIGHTS = ("WeightsSymmetricQuantizer", "WeightsPOTQuantizer")
ACTIVATIONS = ("ActivationSymmetricQuantizer", "ActivationPOTQuantizer")


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _activation_constants(threshold: float, signed: int, num_bits: int) -> tuple[np.float32, np.float32, np.float32]:
    """(lo, hi, scale) as MCT's numpy activation quantizer computes them (in double, then float32 against a float32
    tensor, as numpy casts a Python float)."""
    threshold = float(threshold)
    scale = threshold / (2 ** (num_bits - 1)) if signed else threshold / (2 ** num_bits)
    lo = -threshold if signed else 0.0
    return np.float32(lo), np.float32(threshold - scale), np.float32(scale)


def standard_ops(model: Any) -> tuple[Any, dict[str, int]]:
    """A copy of ``model`` (an MCT-exported ``onnx.ModelProto``) with its weights quantizers folded and its activation
    quantizers written as Clip/Div/Round/Mul; with how many of each were rewritten."""
    import onnx
    from mct_quantizers.pytorch.quantizers.weights_inferable_quantizers.weights_symmetric_inferable_quantizer import (
        quantize_sym_weights_numpy,
    )
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts |= {n.output[0]: numpy_helper.to_array(_attrs(n)["value"]) for n in graph.node
               if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and "value" in _attrs(n)}
    nodes, new_inits, counts = [], [], {"weights_folded": 0, "activations_rewritten": 0}
    for node in graph.node:
        attrs = _attrs(node) if node.domain == DOMAIN else {}
        if node.domain == DOMAIN and node.op_type in WEIGHTS and all(i in consts for i in node.input):
            w, thr = (np.asarray(consts[i], np.float32) for i in node.input)
            q = quantize_sym_weights_numpy(w, int(attrs["num_bits"]), thr, int(attrs["per_channel"]),
                                           int(attrs["channel_axis"]))
            new_inits.append(numpy_helper.from_array(np.asarray(q, np.float32), node.output[0]))
            counts["weights_folded"] += 1
        elif node.domain == DOMAIN and node.op_type in ACTIVATIONS:
            lo, hi, scale = _activation_constants(attrs["threshold"], int(attrs["signed"]), int(attrs["num_bits"]))
            base = f"{node.output[0]}__q"
            for suffix, value in (("lo", lo), ("hi", hi), ("scale", scale)):
                new_inits.append(numpy_helper.from_array(np.array(value, np.float32), f"{base}_{suffix}"))
            nodes += [helper.make_node("Clip", [node.input[0], f"{base}_lo", f"{base}_hi"], [f"{base}_c"]),
                      helper.make_node("Div", [f"{base}_c", f"{base}_scale"], [f"{base}_d"]),
                      helper.make_node("Round", [f"{base}_d"], [f"{base}_r"]),
                      helper.make_node("Mul", [f"{base}_r", f"{base}_scale"], [node.output[0]])]
            counts["activations_rewritten"] += 1
        else:
            nodes.append(node)
    used = {i for n in nodes for i in n.input}
    nodes = [n for n in nodes if n.op_type != "Constant" or n.domain not in ("", "ai.onnx") or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    kept = [i for i in graph.initializer if i.name in used or i.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model, counts


def identical(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Whether two runs' outputs are the same bit for bit."""
    return len(a) == len(b) and all(x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
                                    for x, y in zip(a, b, strict=True))


def layer_bits(model: Any, shapes: dict[str, tuple[int, ...]]) -> list[LayerRun]:
    """Each Conv/MatMul of an MCT-exported model (``onnx.ModelProto``) with its bits: ``int8`` where its weights and
    input are 8-bit, else e.g. ``int4 weights`` or ``int16 activations``; MACs from ``shapes`` (each op's output
    shape, as a run gave them) and the weights' shapes."""
    from onnx import numpy_helper

    weight_bits = {n.output[0]: int(_attrs(n)["num_bits"]) for n in model.graph.node
                   if n.domain == DOMAIN and n.op_type.startswith("Weights")}
    act_bits = {n.output[0]: int(_attrs(n)["num_bits"]) for n in model.graph.node
                if n.domain == DOMAIN and n.op_type.startswith("Activation")}
    consts = {i.name: tuple(i.dims) for i in model.graph.initializer}
    consts |= {n.output[0]: numpy_helper.to_array(_attrs(n)["value"]).shape for n in model.graph.node
               if n.op_type == "Constant" and "value" in _attrs(n)}
    weight_of = {n.output[0]: consts.get(n.input[0]) for n in model.graph.node if n.output[0] in weight_bits}
    out = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        w = next((i for i in n.input[1:] if i in weight_bits), None)
        wb, ab = weight_bits.get(w, 8) if w else None, act_bits.get(n.input[0], 8)
        parts = ([f"int{wb} weights"] if wb not in (None, 8) else []) + ([f"int{ab} activations"] if ab != 8 else [])
        y, wshape = shapes.get(n.output[0]), weight_of.get(w) if w else None
        macs = int(np.prod(y[1:]) * np.prod(wshape[1:])) if n.op_type == "Conv" and y and wshape else 0
        name = (n.name or n.output[0]).replace("/layer/", "/")  # MCT wraps each op in a "layer" module
        out.append(LayerRun(name, f"{n.op_type} (IMX500)", ", ".join(parts) or "int8", None, macs))
    return out
