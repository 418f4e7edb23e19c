"""Q/DQ files adapted to the CPU that runs them: 7-bit weights where int8 kernels have no VNNI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from yoloq.backends.openvino import OpenVinoBackend, runs_without_vnni
from yoloq.qdq import seven_bit_weights

AVX2_ONLY = {"arch": "x86_64", "isa": ["avx", "avx2", "fma"]}
VNNI = {"arch": "x86_64", "isa": ["avx2", "avx512f", "avx512_vnni"]}


def _qdq_conv(path: Path) -> np.ndarray:
    """A Q/DQ conv whose int8 weights use the whole range, as a QAT export's do; returns the weights."""
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (4, 3, 3, 3)).astype(np.int8)
    w[0, 0, 0, 0], w[1, 0, 0, 0] = -128, 127
    scale = np.array([0.01, 0.02, 0.03, 0.04], np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"])]
    inits = [numpy_helper.from_array(np.float32(1 / 255), "xs"), numpy_helper.from_array(np.uint8(0), "xz"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "ws"),
             numpy_helper.from_array(np.zeros(4, np.int8), "wz")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return w


def test_seven_bit_weights_halve_the_integers_and_double_the_scales(tmp_path: Path):
    w = _qdq_conv(tmp_path / "q.onnx")
    assert seven_bit_weights(tmp_path / "q.onnx", tmp_path / "q7.onnx") == 1  # the weights, not the activations
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "q7.onnx")).graph.initializer}
    assert inits["w"].dtype == np.int8 and inits["w"].min() >= -64 and inits["w"].max() <= 63
    assert np.array_equal(inits["w"], np.clip(np.rint(w / 2), -64, 63))
    np.testing.assert_array_equal(inits["ws"], np.array([0.02, 0.04, 0.06, 0.08], np.float32))
    assert inits["xs"] == np.float32(1 / 255)  # activations untouched
    x = np.random.default_rng(1).random((1, 3, 8, 8), np.float32)
    y8, y7 = (ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
              for f in ("q.onnx", "q7.onnx"))
    # each weight moves by at most half its 8-bit step: the outputs stay close (27 products per output)
    assert np.abs(y7 - y8).max() <= 27 * 0.5 * 0.04 + 1e-5


def test_qat_runs_on_7_bit_weights_in_openvino_where_its_kernels_have_no_vnni(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    ov = OpenVinoBackend()
    assert runs_without_vnni(AVX2_ONLY) and not runs_without_vnni(VNNI)
    assert ov.qdq_variant_options(Path("m.onnx"), AVX2_ONLY) == {"prequantized": "m.onnx", "overflow_fix": "enable"}
    assert ov.qdq_variant_options(Path("m.onnx"), VNNI) == {"prequantized": "m.onnx"}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN capped: the kernels of an AVX2-only machine
    assert runs_without_vnni(VNNI)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert not runs_without_vnni(VNNI)
