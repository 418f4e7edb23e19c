"""Exports with a batch dimension: a batch-1 graph made to take N images at once, checked against batch 1.

yoloq's ONNX exports (and the OpenVINO IR made from them) have a fixed batch of 1: every ``Reshape`` carries its
target shape as a constant whose first entry is the batch. Written as 0 ("copy the input's first dimension", ONNX's
and OpenVINO's ``special_zero``), the same graph runs any batch with the same arithmetic per image. A graph whose
batch is used in other ways (an NMS-free head's top-k over the whole batch, say) would mix images: so every
batched runtime is checked on N different inputs against N runs at batch 1 before it is used, and refused where
they differ (the record then says so and the pass goes on without that batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from yoloq.errors import YoloqError


class BatchError(YoloqError):
    """A model that cannot run as a batch: it says why, the throughput pass goes on without that batch."""


def onnx_with_batch(src: Path, batch: int, dst: Path) -> Path:
    """``src`` (a batch-1 ONNX) written to ``dst`` with input and outputs of batch ``batch`` and every constant
    ``Reshape`` target's leading 1 written as 0 (the input's own first dimension)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    for vi in list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and (dims[0].dim_value == 1 or dims[0].dim_param):
            dims[0].Clear()
            dims[0].dim_value = batch
    del g.value_info[:]  # shapes inferred at batch 1: the runtime infers them again
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    for k, node in enumerate(n for n in g.node if n.op_type == "Reshape"):
        if any(a.name == "allowzero" and a.i for a in node.attribute) or len(node.input) < 2:
            continue
        name = node.input[1]
        if name in inits:
            shape = numpy_helper.to_array(inits[name])
        elif name in consts:
            shape = numpy_helper.to_array(consts[name].attribute[0].t)
        else:
            continue  # computed at run time from the input's own shape
        if shape.ndim == 1 and shape.size and shape[0] == 1:
            new = shape.copy()
            new[0] = 0
            t = numpy_helper.from_array(new.astype(np.int64), f"{name}__batch{k}")
            g.initializer.append(t)
            node.input[1] = t.name
    onnx.save(model, str(dst))
    return dst


def ov_with_batch(model: Any, batch: int) -> Any:
    """An OpenVINO model (``ov.Model``) with input batch ``batch``: each ``Reshape`` whose target is a constant
    starting with 1 (and whose zeros copy the input's dimensions) gets that 1 as 0, then the model is reshaped."""
    import openvino as ov
    from openvino import opset13 as ops

    for op in model.get_ordered_ops():
        if op.get_type_name() != "Reshape" or not op.get_attributes().get("special_zero"):
            continue
        src = op.input_value(1).get_node()
        if src.get_type_name() != "Constant":
            continue
        shape = src.get_data().copy()
        if shape.ndim == 1 and shape.size and shape[0] == 1:
            shape[0] = 0
            op.input(1).replace_source_output(ops.constant(shape.astype(np.int64)).output(0))
    first = model.input(0)
    dims = list(first.get_partial_shape().to_shape())
    model.reshape({first: ov.PartialShape([batch] + dims[1:])})
    return model


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and its message's first line."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def check_batch(batched: Callable[[np.ndarray], np.ndarray], single: Callable[[np.ndarray], np.ndarray], batch: int,
                imgsz: int, what: str, rtol: float = 1e-3) -> float:
    """Run ``batched`` on ``batch`` different inputs and ``single`` on each alone; raise :class:`BatchError` when
    any image's output differs by more than ``rtol`` of the output's largest magnitude (float kernels round
    differently per batch; a graph that mixes images differs by whole boxes). Returns the largest difference."""
    rng = np.random.default_rng(0)
    x = rng.random((batch, 3, imgsz, imgsz), dtype=np.float32)
    try:
        y = np.asarray(batched(x))
    except Exception as e:  # noqa: BLE001 - the runtime's own error, said in one line
        raise BatchError(f"{what} does not run at batch {batch}: {one_line(e)}") from e
    ref = np.concatenate([np.asarray(single(x[i:i + 1])) for i in range(batch)])
    if y.shape != ref.shape:
        raise BatchError(f"{what} at batch {batch} gives shape {y.shape}, not {ref.shape}")
    scale = float(np.abs(ref).max()) or 1.0
    err = float(np.abs(y.astype(np.float64) - ref).max()) / scale
    if err > rtol:
        raise BatchError(f"{what} at batch {batch} differs from batch 1 by {err:.2e} of its range (over {rtol:g}): "
                         f"its graph uses the batch beyond its reshapes")
    return err
