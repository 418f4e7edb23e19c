"""Which tensors an ONNX Runtime INT8 model reads ranges of, and its calibrator narrowed to them: each tensor's
histogram is its own, so a variant with layers in float calibrates only the tensors its int8 nodes read."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator


def op_types() -> list[str]:
    """The op types calibrated: ``quantize_static``'s defaults for both formats."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def quantized_tensors(prep: Path, exclude: list[str] | None = None) -> set[str]:
    """The tensors whose ranges quantizing ``prep`` with ``exclude`` left in float can read: the float inputs and
    outputs (not initializers) of every node of a calibrated op type that is not excluded. With nothing
    excluded, every tensor ONNX Runtime's calibrator selects (its ``select_tensors_to_calibrate``)."""
    import itertools

    import onnx

    graph = onnx.load(str(prep), load_external_data=False).graph
    infos = {v.name: v for v in itertools.chain(graph.value_info, graph.output, graph.input)}
    init = {i.name for i in graph.initializer}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    ops, skip = set(op_types()), set(exclude or ())
    return {t for n in graph.node if n.op_type in ops and n.name not in skip for t in itertools.chain(n.input, n.output)
            if t in infos and t not in init and infos[t].type.HasField("tensor_type")
            and infos[t].type.tensor_type.elem_type in floats}


@contextlib.contextmanager
def only(tensors: set[str] | None) -> Iterator[None]:
    """While a calibrator is made, it augments the graph with only ``tensors`` (all it would select: None): ONNX
    Runtime's calibrators take op types, not tensors, so its selection is narrowed for the call."""
    from onnxruntime.quantization.calibrate import CalibraterBase

    if tensors is None:
        yield
        return
    select = CalibraterBase.select_tensors_to_calibrate

    def narrowed(self: Any, model: Any) -> tuple[set[str], dict[str, Any]]:
        found, infos = select(self, model)
        return set(found) & tensors, infos

    CalibraterBase.select_tensors_to_calibrate = narrowed  # type: ignore[method-assign]
    try:
        yield
    finally:
        CalibraterBase.select_tensors_to_calibrate = select  # type: ignore[method-assign]
