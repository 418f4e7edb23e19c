"""The INT8 fixes, on real models and runtimes: ORT softmax rewrite, QAT weights folded to int8,
LiteRT head kept float by tensor name, INT8 sizes, and the side-by-side latency pass."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from yoloq.backends.litert import ATTENTION, head_patterns, scope_rules
from yoloq.backends.onnxruntime import OrtRuntime
from yoloq.backends.onnxruntime.graph import ort_graph, rewrite_softmax
from yoloq.errors import ConfigError
from yoloq.models import Head
from yoloq.preprocess import prepare, read_image
from yoloq.qdq import fold_weight_quantizers

pytestmark = pytest.mark.shared


def _image(smoke_run) -> np.ndarray:  # noqa: ANN001
    from conftest import SHARED

    path = sorted((SHARED / "datasets" / "coco-mini" / "val2017").glob("*.jpg"))[0]
    return prepare([read_image(path)], 320)[0]


def test_ort_softmax_rewrite_keeps_the_outputs(smoke_run, tmp_path: Path):
    base = next((smoke_run["dir"] / "artifacts" / "_base").glob("*-b1.onnx"))
    model = onnx.load(str(base))
    assert rewrite_softmax(model) == 1  # YOLO11n's DFL softmax over axis 1
    inner = [n for n in model.graph.node if n.op_type == "Softmax"
             and next((a.i for a in n.attribute if a.name == "axis"), -1) not in (-1, 3)]
    assert not inner
    fixed = ort_graph(base, tmp_path)
    assert fixed != base and ort_graph(base, tmp_path) == fixed  # cached by content
    x = _image(smoke_run)
    a = OrtRuntime(base, 2, ["CPUExecutionProvider"]).predict(x)
    b = OrtRuntime(fixed, 2, ["CPUExecutionProvider"]).predict(x)
    assert a.shape == b.shape and np.abs(a - b).max() < 1e-3 * max(1.0, np.abs(a).max())
    # the ORT variants of the run use the rewritten graph
    rec = smoke_run["records"]["onnxruntime-fp32"]
    assert "ort1" in rec["artifact"]


def test_folding_weight_quantizers_changes_nothing_but_the_file(tmp_path: Path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    scale = (np.abs(w).reshape(8, -1).max(1) / 127).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=0),
             helper.make_node("Conv", ["x", "wd"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"),
                               numpy_helper.from_array(np.zeros(8, np.int8), "z")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    path = tmp_path / "qdq.onnx"
    onnx.save(m, str(path))
    x = rng.normal(size=(1, 3, 16, 16)).astype(np.float32)
    before = OrtRuntime(path, 1, ["CPUExecutionProvider"]).predict(x)
    size = path.stat().st_size
    assert fold_weight_quantizers(path) == 1
    after = OrtRuntime(path, 1, ["CPUExecutionProvider"]).predict(x)
    assert np.array_equal(before, after)
    folded = onnx.load(str(path))
    assert [n.op_type for n in folded.graph.node] == ["DequantizeLinear", "Conv"]
    assert {t.name: t.data_type for t in folded.graph.initializer}["wq"] == TensorProto.INT8
    assert path.stat().st_size < size


def test_litert_scope_rules_and_errors():
    from yoloq.backends.litert import stem_pattern

    ops = {"SOFTMAX", "LOGISTIC", "CONV_2D", "ALL_SUPPORTED"}
    head = Head("Detect", 23, dfl=True)
    assert scope_rules({"keep_head_float": "none", "keep_attention_float": False, "keep_stem_float": 0}, ops,
                       head) == []
    assert scope_rules({"keep_head_float": "none"}, ops, head) == [  # the defaults: attention and 3-layer stem
        (ATTENTION, "ALL_SUPPORTED"), (stem_pattern(3)[0], "ALL_SUPPORTED")]
    decode = scope_rules({"keep_head_float": "decode"}, ops, head)
    outputs = scope_rules({"keep_head_float": "outputs", "float_types": ["SOFTMAX"]}, ops, head)
    assert len(outputs) == len(decode) + 2 and outputs[-1] == (".*", "SOFTMAX")
    with pytest.raises(ConfigError, match="not TFLite op types"):
        scope_rules({"float_types": ["Softmax"]}, ops, head)
    with pytest.raises(ConfigError, match="not a regular expression"):
        scope_rules({"float_patterns": ["("]}, ops, head)


def test_litert_head_patterns_follow_the_head_structure():
    import re

    name = "ultralytics.nn.modules.head.{}_23;16"
    v10 = head_patterns(Head("v10Detect", 23, dfl=True), "decode")[0]
    assert any(re.search(p, name.format("v10Detect")) for p in v10)
    assert not any(re.search(p, name.format("Detect")) for p in v10)  # another head type, not this one
    no_dfl = head_patterns(Head("Detect", 23, dfl=False), "outputs")
    assert not any("DFL" in p for p in no_dfl[0]) and len(no_dfl[1]) == 1


def test_litert_attention_pattern_covers_every_ultralytics_attention():
    import re

    block = "ultralytics.nn.modules.block"
    seq = "torch.nn.modules.container.Sequential_m"
    for name in (f"{block}.C2PSA_10/{seq}/{block}.PSABlock_0/{block}.Attention_attn;27",
                 f"{block}.PSABlock_0/{block}.Attention_attn/ultralytics.nn.modules.conv.Conv_qkv/x",  # its convs
                 f"{block}.A2C2f_6/{block}.ABlock_0/{block}.AAttn_attn;3",  # YOLO12's area attention
                 f"{block}.PSA_10/{block}.Attention_attn;1"):  # YOLOv10's PSA
        assert re.search(ATTENTION, name), name
    for name in (f"{block}.C2PSA_10/ultralytics.nn.modules.conv.Conv_cv1/x", f"{block}.C3k2_2;4"):
        assert not re.search(ATTENTION, name), name


def test_litert_stem_pattern_takes_the_first_top_level_modules_only():
    from yoloq.backends.litert import stem_pattern

    assert stem_pattern(0) == []
    (pat,) = stem_pattern(3)
    top = "ultralytics.nn.tasks.DetectionModel_model/ultralytics.nn.modules"
    for name in (f"{top}.conv.Conv_0/torch.nn.modules.conv.Conv2d_conv;3;",
                 f"{top}.block.C3k2_2/ultralytics.nn.modules.block.Bottleneck_0/x",  # inside module 2
                 "ultralytics.nn.tasks.YOLOv10DetectionModel_model/ultralytics.nn.modules.block.C2f_2;1"):
        assert re.search(pat, name), name
    for name in (f"{top}.conv.Conv_3/torch.nn.modules.conv.Conv2d_conv;2;",
                 f"{top}.block.C3k2_4/ultralytics.nn.modules.block.Bottleneck_0/x",  # a nested _0: not module 0
                 f"{top}.block.C3k2_13/x", f"{top}.head.Detect_23/torch.nn.modules.container.Sequential_0/x"):
        assert not re.search(pat, name), name


def test_ort_keep_stem_float_is_the_first_top_level_modules(tmp_path: Path):
    """ONNX Runtime's keep_stem_float keeps the nodes of ``/model.0/``..``/model.N-1/`` in float (the float
    scope its held-out candidate wrote as a pattern); stored configs predate it and mean 0."""
    from conftest import SHARED

    from yoloq.backends.registry import backend_class, resolve_options
    from yoloq.backends.scope import float_scope

    onnx_path = SHARED / "models" / "yolo11n.onnx"
    head = float_scope(onnx_path, {"keep_stem_float": 0})
    stem = float_scope(onnx_path, {"keep_stem_float": 3})
    assert stem == float_scope(onnx_path, {"keep_stem_float": 0, "float_patterns": [r"^/model\.[0-2]/"]})
    added = set(stem) - set(head)
    assert {n.split("/")[1] for n in added} == {"model.0", "model.1", "model.2"} and len(added) >= 9
    assert "/model.2/cv2/conv/Conv" in added and not any(n.startswith("/model.20/") for n in added)
    cls = backend_class("onnxruntime")
    assert resolve_options(cls, "int8", {}, "v")["keep_stem_float"] == 3
    assert resolve_options(cls, "int8", {}, "v", stored=True)["keep_stem_float"] == 0
    with pytest.raises(ConfigError, match="keep_stem_float"):
        resolve_options(cls, "int8", {"keep_stem_float": -1}, "v")


def test_ort_keep_stem_float_says_when_the_graph_has_no_stem_by_that_name(tmp_path: Path):
    """On a graph whose nodes are not named as Ultralytics' exports name them, keep_stem_float finds nothing:
    one note says so (the export records it and prints it) instead of the stem silently running in int8."""
    from conftest import SHARED

    from yoloq.backends.scope import float_scope, stem_missing

    assert stem_missing(SHARED / "models" / "yolo11n.onnx", 3) is None
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["images", "w"], ["y"], name="backbone_conv_0")], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 14, 14])], [w])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(foreign))
    note = stem_missing(foreign, 3)
    assert note and "keep_stem_float: 3" in note and "foreign.onnx" in note and "float_patterns" in note
    assert stem_missing(foreign, 0) is None
    assert float_scope(foreign, {"keep_stem_float": 3}) == []  # what it means: nothing kept


def test_an_option_added_later_keeps_older_runs_as_they_ran():
    """A stored config without ``keep_attention_float`` predates it: it means False, and an explicit False
    keeps the older records' keys (so `yoloq reproduce` and resume re-run nothing)."""
    from yoloq.artifacts import _keyed_options
    from yoloq.backends.registry import backend_class, resolve_options
    from yoloq.config import VariantConfig

    cls = backend_class("litert")
    assert resolve_options(cls, "int8", {}, "v")["keep_attention_float"] is True
    assert resolve_options(cls, "int8", {}, "v", stored=True)["keep_attention_float"] is False
    assert resolve_options(cls, "fp32", {}, "v", stored=True).get("keep_attention_float") is None
    old = {k: x for k, x in resolve_options(cls, "int8", {"keep_attention_float": False}, "v").items()
           if k not in ("keep_attention_float", "keep_stem_float", "weight_clipping", "weight_rounding")}  # predate too
    explicit = VariantConfig(format="litert", precision="int8", options={**old, "keep_attention_float": False})
    assert _keyed_options(explicit) == old
    new = VariantConfig(format="litert", precision="int8", options={**old, "keep_attention_float": True})
    assert _keyed_options(new) != old
    # an option whose default is what configs meant before it existed stays out of keys at that default
    assert "weight_clipping" not in _keyed_options(VariantConfig(format="litert", precision="int8",
                                                                 options={**old, "weight_clipping": "minmax"}))
    assert _keyed_options(VariantConfig(format="litert", precision="int8",
                                        options={**old, "weight_clipping": "octav"}))["weight_clipping"] == "octav"
    assert "weight_rounding" not in _keyed_options(VariantConfig(format="litert", precision="int8",
                                                                 options={**old, "weight_rounding": "nearest"}))
    assert _keyed_options(VariantConfig(format="litert", precision="int8",
                                        options={**old, "weight_rounding": "gptq"}))["weight_rounding"] == "gptq"


def test_litert_int8_keeps_the_head_decode_in_float(smoke_run):
    r = smoke_run["records"]["litert-int8"]
    kept = r["artifact_info"]["kept_float"]
    kinds = {k.split(":")[0] for k in kept}
    assert {"SOFTMAX", "LOGISTIC", "CONCATENATION", "CONV_2D"} <= kinds, kept
    attention = [k for k in kept if re.search(r"Attention_attn|Conv_(qkv|proj|pe)/", k)]
    assert attention, kept  # keep_attention_float, the default
    assert len(kept) - len(attention) < 80  # the head's tail and the 3-layer stem, not the network (~400 ops)
    settings = r["artifact_info"]["settings"]
    assert (settings["calibrate_method"], settings["keep_stem_float"]) == ("mean", 3)  # the held-out choice


def test_litert_range_updates_are_order_free():
    from yoloq.backends.litert_ranges import all_update, extreme_update, mean_update, quantile

    rng = np.random.default_rng(0)
    per_image = [{"min": rng.normal(size=4).astype(np.float32), "max": rng.normal(size=4).astype(np.float32) + 3}
                 for _ in range(7)]  # float32, as TFLite tensors are
    for order in (per_image, per_image[::-1]):
        mean, ext = {}, {}
        for q in order:
            mean, ext = mean_update(mean, q), extreme_update(ext, q)
        assert np.allclose(mean["max"], np.mean([q["max"] for q in per_image], axis=0)) and mean["_n"] == 7
        assert np.array_equal(ext["min"], np.min([q["min"] for q in per_image], axis=0))
        kept = order[0]  # the calibrator stores the first image as it came, then updates
        for q in order[1:]:
            kept = all_update(kept, q)
        p90 = quantile(kept, 0.9)
        assert np.array_equal(p90["max"], np.quantile([q["max"] for q in per_image], 0.9, axis=0).astype(np.float32))
        assert np.array_equal(p90["min"], np.quantile([q["min"] for q in per_image], 0.1, axis=0).astype(np.float32))


@pytest.mark.parametrize("fmt", ["onnxruntime", "litert"])
def test_int8_file_is_at_most_030_of_fp32(smoke_run, fmt: str):
    recs = smoke_run["records"]
    ratio = recs[f"{fmt}-int8"]["size_mb"] / recs[f"{fmt}-fp32"]["size_mb"]
    print(f"{fmt} INT8/FP32 size: {ratio:.3f}")
    assert ratio <= 0.30


def test_latency_is_measured_side_by_side(smoke_run):
    recs = [r for r in smoke_run["records"].values() if r["status"] == "ok"]
    groups = {r["latency"]["group"] for r in recs}
    assert len(groups) == 1 and all(r["latency"]["mode"] == "interleaved" for r in recs)
    assert all(r["latency"]["group_size"] == len(recs) and r["latency"]["runs"] >= 10 for r in recs)


def test_records_give_speedup_against_fp32_and_fp16(smoke_run):
    recs = smoke_run["records"]
    for fmt in ("onnxruntime", "openvino", "litert"):
        r = recs[f"{fmt}-int8"]
        s = r["speedup"]
        assert (s["fp32"], s["fp16"]) == (f"{fmt}-fp32", f"{fmt}-fp16") and s["fp32_same_pass"] and s["fp16_same_pass"]
        assert abs(s["vs_fp32"] - recs[f"{fmt}-fp32"]["latency"]["p50_ms"] / r["latency"]["p50_ms"]) < 1e-9
        assert abs(s["vs_fp16"] - recs[f"{fmt}-fp16"]["latency"]["p50_ms"] / r["latency"]["p50_ms"]) < 1e-9
    assert "x fp16" in (smoke_run["dir"] / "report.md").read_text()


def test_a_fresh_clone_rerun_keeps_committed_records(smoke_run, tmp_path: Path):
    """Committed results hold records but no artifacts: re-running the config must not re-time (or fail) them."""
    import shutil

    from conftest import run_cli

    out = tmp_path / "clone"
    out.mkdir()
    for f in ("records.jsonl", "config.yaml"):
        shutil.copy(smoke_run["dir"] / f, out / f)
    for f in (smoke_run["dir"] / "evaldata").glob("*.npz"):
        (out / "evaldata").mkdir(exist_ok=True)
        shutil.copy(f, out / "evaldata" / f.name)
    before = (out / "records.jsonl").read_text()
    import yaml
    from conftest import REPO_ROOT

    cfg = yaml.safe_load((REPO_ROOT / "configs" / "smoke.yaml").read_text())
    cfg["variants"] = cfg["variants"][:-1]  # fewer variants than the timed pass (as `yoloq run` after `yoloq qat`)
    (tmp_path / "fewer.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", str(tmp_path / "fewer.yaml"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "latency:" not in proc.stderr and "failed" not in (out / "summary.csv").read_text()
    assert (out / "records.jsonl").read_text() == before


def test_litert_fast_calibration_gives_the_default_modes_model(smoke_run):
    """The profiler-based ranges quantize to the same bytes as ai-edge-quantizer's default calibration
    (mean, the default, and min-max of per-image ranges, and p90, a quantile over the images' ranges)."""
    import hashlib

    from ai_edge_quantizer import calibrator, quantizer, recipe, recipe_manager

    from yoloq.backends.litert import _signature_input
    from yoloq.backends.litert_ranges import all_update, calibrate, extreme_update, mean_update, quantile

    fp32 = next((smoke_run["dir"] / "artifacts" / "_base").glob("*-fp32.tflite"))
    sig, name = _signature_input(fp32)
    rng = np.random.default_rng(0)
    data = {sig: [{name: rng.uniform(0, 1, (1, 3, 320, 320)).astype(np.float32)} for _ in range(3)]}

    def quantize(method: str, slow: bool) -> str:
        qt = quantizer.Quantizer(str(fp32))
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        if slow:  # the library's default mode (every tensor copied to Python)
            rm = recipe_manager.RecipeManager()
            rm.load_quantization_recipe(qt.get_quantization_recipe())
            c = calibrator.Calibrator(fp32.read_bytes(), qsv_update_func={"mean": mean_update, "minmax":
                                                                          extreme_update}.get(method, all_update))
            c.calibrate(data, rm)
            qsvs = {k: quantile(v, 0.9) if method == "p90" else v for k, v in c.get_model_qsvs().items()}
            ranges = {k: {f: np.asarray(v[f], np.float32) for f in ("min", "max")} for k, v in qsvs.items()}
        else:
            ranges = calibrate(qt, fp32, data, method)
        return hashlib.sha256(qt.quantize(calibration_result=ranges).quantized_model).hexdigest()

    for method in ("mean", "minmax", "p90"):
        assert quantize(method, slow=False) == quantize(method, slow=True), method
