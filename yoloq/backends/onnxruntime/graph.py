"""ONNX Runtime graph fix-up: softmax over an inner axis becomes a last-axis softmax.

Ultralytics' DFL decode takes a softmax over axis 1 of a ``[1, 16, 4, anchors]`` tensor. ONNX
Runtime's CPU kernel is fast only over the last axis: on this 2-core machine the DFL softmax alone
took 20.4 ms of YOLO11n's ~100 ms at 640 (profiled), in FP32 and INT8 alike. Wrapping it in two
transposes gives the same values at ~1 ms. OpenVINO gains nothing from it, so only ONNX Runtime
variants use the rewritten graph.

The rule is structural, not a tensor name: every softmax over an inner axis is rewritten (the values
are the same whatever the softmax is). In a DFL head (YOLOv5u to YOLO12) that is the DFL; a head
without DFL (YOLO26, ``reg_max`` 1) has none, and its graph is used as it is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REVISION = "ort1"  # bump when the rewrite changes, so cached graphs are rebuilt


def _rank(model, name: str) -> int | None:  # noqa: ANN001 - an onnx ModelProto
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def rewrite_softmax(model) -> int:  # noqa: ANN001 - an onnx ModelProto, changed in place
    """Wrap every inner-axis Softmax of ``model`` in transposes; returns how many were rewritten."""
    from onnx import helper, shape_inference

    inferred = shape_inference.infer_shapes(model)
    graph = model.graph
    done = 0
    for i, node in reversed(list(enumerate(graph.node))):
        if node.op_type != "Softmax":
            continue
        rank = _rank(inferred, node.input[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if rank is None or axis in (-1, rank - 1):
            continue
        axis %= rank
        perm = [d for d in range(rank) if d != axis] + [axis]
        back = [perm.index(d) for d in range(rank)]
        x, y = node.input[0], node.output[0]
        new = [helper.make_node("Transpose", [x], [f"{x}/last_axis"], perm=perm, name=f"{node.name}/to_last"),
               helper.make_node("Softmax", [f"{x}/last_axis"], [f"{y}/last_axis"], axis=rank - 1, name=node.name),
               helper.make_node("Transpose", [f"{y}/last_axis"], [y], perm=back, name=f"{node.name}/back")]
        graph.node.remove(node)
        for n in reversed(new):
            graph.node.insert(i, n)
        done += 1
    return done


def ort_graph(src: Path, dest_dir: Path) -> Path:
    """``src`` with inner-axis softmaxes rewritten, cached in ``dest_dir`` by content; ``src`` if none needed."""
    import onnx

    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:8]
    dest = dest_dir / f"{src.stem}-{digest}-{REVISION}.onnx"
    if dest.is_file():
        return dest
    model = onnx.load(str(src))
    if not rewrite_softmax(model):
        return src
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, dest)
    return dest


def fp16_onnx(src: Path, dest: Path) -> Path:
    """``src`` with float16 weights and compute, float32 inputs and outputs (ONNX Runtime's converter)."""
    import onnx
    from onnxruntime.transformers import float16

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".onnx.tmp")
    onnx.save(float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(tmp))
    os.replace(tmp, dest)
    return dest
