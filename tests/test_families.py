"""Every YOLO family (random-init, built from Ultralytics' YAMLs) through every CPU format and precision.

For each family: the whole pipeline runs every variant ``ok``; the record names the head branch that
ran (the one-to-one NMS-free branch with ``eval.nms: false`` on YOLOv10/YOLO26, except LiteRT INT8,
which falls back as Ultralytics' exporter does); every FP32 export's raw head output agrees with
torch's and its detections match torch's. Ultralytics ``.onnx`` exports (end-to-end and not) run as
sources too, their branch read from the graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from families import ALL_VARIANTS, END2END, FAMILIES, build, config, export_onnx, matched
from tolerance import fp64_twin, rounding_tolerance

from yoloq.artifacts import cached_artifact
from yoloq.backends.base import Artifact
from yoloq.backends.registry import get_backend, resolve_config
from yoloq.config import EvalConfig, parse_config
from yoloq.data import load_split
from yoloq.models import load_source
from yoloq.paths import REPO_ROOT
from yoloq.pipeline import run
from yoloq.postprocess import postprocess
from yoloq.preprocess import prepare, read_image
from yoloq.records import RecordStore

pytestmark = pytest.mark.shared

IMGSZ = 320
POST = EvalConfig(conf=0.25, iou=0.7, max_det=300, multi_label=False)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ultralytics import YOLO

    from yoloq.paths import shared_root

    names = YOLO(str(shared_root() / "models" / "yolo11n.pt")).names
    dest = tmp_path_factory.mktemp("zoo")
    return {f: build(f, dest, names) for f in FAMILIES}


@pytest.fixture(scope="module")
def batches() -> list[tuple[np.ndarray, list]]:  # two real val2017 images
    split = load_split(parse_config(config(Path("x.pt"), Path("o"), [{"format": "torch", "precision": "fp32"}]),
                                    REPO_ROOT).data, REPO_ROOT)
    return [prepare([read_image(s.path)], IMGSZ) for s in split.samples[:2]]


def _run(model: Path, out: Path, variants: list[dict], nms: bool | None, calibration: int = 4) -> dict:
    cfg = resolve_config(parse_config(config(model, out, variants, nms, IMGSZ, calibration), REPO_ROOT))
    run(cfg, out)
    return {r.name: r for r in RecordStore(out).all()}


def _runtime(out: Path, rec) -> object:  # noqa: ANN001 - a Record
    art = cached_artifact(out / "artifacts" / rec.name, rec.key)
    assert art is not None, f"{rec.name}: its export is missing"
    return get_backend(rec.format).load(art, 2)


def _torch(pt: Path, end2end: bool) -> object:
    return get_backend("torch").load(Artifact(pt, "torch", "fp32", {"end2end": end2end, "max_det": 300}), 2)


def _agree(ref_rt, rt, batches, end2end: bool, label: str) -> None:  # noqa: ANN001 - runtimes
    ref64 = fp64_twin(ref_rt)
    for x, lbs in batches:
        a, b = ref_rt.predict(x), rt.predict(x)
        assert a.shape == b.shape, f"{label}: raw output {b.shape}, torch {a.shape}"
        assert np.isfinite(b).all(), label
        if not end2end:  # [B, 4+nc, N]: the same anchors in the same order
            exact = ref64.predict(x)
            box_tol = rounding_tolerance(a[:, :4], exact[:, :4], 0.25)
            score_tol = rounding_tolerance(a[:, 4:], exact[:, 4:], 2e-3)
            np.testing.assert_allclose(b[:, :4], a[:, :4], atol=box_tol, rtol=1e-3, err_msg=f"{label} boxes")
            np.testing.assert_allclose(b[:, 4:], a[:, 4:], atol=score_tol, err_msg=f"{label} scores")
        da, db = postprocess(a, lbs, POST, end2end)[0], postprocess(b, lbs, POST, end2end)[0]
        assert len(da) > 0, f"{label}: torch finds nothing to compare"
        assert matched(da, db) >= 0.9, f"{label}: detections differ from torch's"


# YOLO11n's own case is left to the trained YOLO11n, which goes through every format in the smoke run and the
# contract tests; an NMS-free head run with NMS (its one-to-many branch) is YOLO26n's case (one calibration image);
# every family x branch x format: tests/bench_families.py
CASES = [(f, None) for f in FAMILIES if f not in ("yolo11n", "yolov10n")] + [(f, False) for f in END2END]


# YOLO11n's DFL/NMS head goes through every format in the smoke run and the contract tests, an NMS-free head through
# a bundle (test_bundle) and every family through the exact rewrites (test_rewrite); the family x format matrix
# (YOLO26n's NMS-free run alone took 4.5 min on 2 cores) is the full tier (--full)


@pytest.mark.parametrize(("family", "nms"), [pytest.param(*c, marks=pytest.mark.full) for c in CASES],
                         ids=[f"{f}-{'e2e' if n is False else 'nms'}" for f, n in CASES])
def test_family_runs_every_format_and_fp32_matches_torch(zoo, batches, tmp_path, family, nms):
    pt = zoo[family]
    tiny = family == "yolo26n" and nms is None  # one calibration image: INT8 still calibrates on every format
    records = _run(pt, tmp_path, [{"format": "torch", "precision": "fp32"}, *ALL_VARIANTS], nms, 1 if tiny else 4)
    assert len(records) == 10
    bad = {n: r.reason for n, r in records.items() if not r.ok}
    assert not bad, bad
    e2e = family in END2END and nms is False
    for name, r in records.items():
        want = "one2one" if e2e and name != "litert-int8" else "one2many"
        assert r.head["branch"] == want, (name, r.head)
        assert r.head["dfl"] == (family != "yolo26n") and r.head["reason"]
        assert r.metrics["images"] == 4 and r.latency.get("runs", 0) >= 3
    if e2e:
        assert "LiteRT INT8" in records["litert-int8"].head["reason"]
    if tiny:
        assert all(records[n].artifact_info["calibration_used"] == 1 for n in records if n.endswith("int8"))
    ref = _torch(pt, e2e)
    for name in ("onnxruntime-fp32", "openvino-fp32", "litert-fp32"):
        _agree(ref, _runtime(tmp_path, records[name]), batches, e2e, f"{family} {name}")
    for name in ("onnxruntime-int8", "openvino-int8", "litert-int8"):  # INT8 runs and predicts
        rt = _runtime(tmp_path, records[name])
        assert all(np.isfinite(rt.predict(x)).all() for x, _ in batches), name


ONNX_CASES = [("yolo26n", True), ("yolo26n", False), ("yolov10n", True)]  # every family: bench_families.py


@pytest.mark.parametrize(("family", "e2e"), [pytest.param(*c, marks=pytest.mark.full) for c in ONNX_CASES],
                         ids=[f"{f}-{'e2e' if e else 'nms'}" for f, e in ONNX_CASES])
def test_ultralytics_onnx_source_runs_its_own_branch(zoo, batches, tmp_path, family, e2e):
    onnx_path = export_onnx(zoo[family], IMGSZ, e2e)
    src = load_source(str(onnx_path))
    assert src.end2end == e2e and src.head.dfl == (family != "yolo26n") and src.head.index >= 0
    variants = [v for v in ALL_VARIANTS if v["format"] != "litert"] + [{"format": "litert", "precision": "fp32"}]
    records = _run(onnx_path, tmp_path, variants, None)
    assert records["litert-fp32"].status == "skipped" and ".pt" in records["litert-fp32"].reason
    for name, r in records.items():
        if r.format == "litert":
            continue
        assert r.ok, (name, r.reason)
        assert r.head["branch"] == ("one2one" if e2e else "one2many"), (name, r.head)
    ref = _torch(zoo[family], e2e)
    for name in ("onnxruntime-fp32", "openvino-fp32"):
        _agree(ref, _runtime(tmp_path, records[name]), batches, e2e, f"{family} onnx {name}")


def test_nms_true_is_refused_with_a_clear_line():
    from yoloq.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.nms"):
        EvalConfig(nms=True)


def test_histogram_calibration_survives_a_nearly_constant_tensor(tmp_path):
    """A sigmoid of ~0 (as in an untrained model) cannot be binned by a 2048-bin histogram: ORT's percentile
    calibration raises; yoloq's falls back to MinMax for that tensor, quantizes, and says so."""
    from onnx import TensorProto, helper, numpy_helper

    from yoloq.backends.onnxruntime.quantize import calibrate, degenerate
    from yoloq.data.calibration import CalibrationSet

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(2, 4, 1, 1)).astype(np.float32), "w2")
    tiny = numpy_helper.from_array(np.array(1e-7, np.float32), "tiny")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Mul", ["c1", "tiny"], ["m"], name="shrink"),
         helper.make_node("Sigmoid", ["m"], ["s"], name="flat"),  # 0.5 +- 1e-7: nearly constant
         helper.make_node("Conv", ["s", "w2"], ["out"], name="conv2")],
        "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 32, 32])], [w1, w2, tiny])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    split = load_split(parse_config(config(Path("x.pt"), Path("o"), [{"format": "torch", "precision": "fp32"}]),
                                    REPO_ROOT).data, REPO_ROOT)
    cal = CalibrationSet(images=tuple(s.path for s in split.samples[:3]), sources=("test",), seed=0, requested=3,
                         sha256="", pool=3, hashes=("a", "b", "c"))
    options = {"calibrate_method": "percentile", "quant_format": "qdq", "per_channel": True,
               "activation_type": "uint8"}
    out = tmp_path / "q.onnx"
    _, _, robust = calibrate(src, tmp_path, cal, 32, options, out)
    assert "s" in robust["minmax_ranges"] and "c1" not in robust["minmax_ranges"]
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)
    assert degenerate(0.4999999, 0.5000001) and not degenerate(-3.0, 5.0) and degenerate(float("nan"), 1.0)
