"""NCNN: FP32 and FP16 through pnnx, INT8 through ncnn's own tools (built by ``yoloq setup ncnn``), scored through the
one pipeline on random-init YOLOv8n (DFL head, NMS) and YOLO26n (no DFL, NMS-free branch falling back to NMS); its
INT8 scope placed on ncnn's convolutions by module name; missing tools a skipped record with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli, side_environment

from yoloq.errors import BackendUnavailable, ExportError

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module", autouse=True)
def ncnn_here() -> None:
    from yoloq.backends.registry import get_backend

    try:
        get_backend("ncnn").version()
    except BackendUnavailable as e:
        pytest.skip(str(e))


def _tools() -> str | None:
    """Why ncnn's INT8 tools are not here after trying to build them (None: they are)."""
    from yoloq.backends.ncnn import tools

    try:
        tools.find()
    except BackendUnavailable:
        try:
            side_environment("ncnn")
        except pytest.skip.Exception as e:
            return str(e)
    return None


@pytest.mark.parametrize(("family", "nms"), [pytest.param("yolov8n", None, marks=pytest.mark.full), ("yolo26n", False)],
                         ids=["yolov8n", "yolo26n-e2e"])
def test_families_through_ncnn(tmp_path, family, nms):
    """Every variant ok with the branch it ran recorded (INT8 skipped with the reason only where ncnn's tools cannot be
    built); FP32's raw output is torch's within float32 rounding; INT8 keeps the head's output convolutions and decode
    in float, quantizes the rest, and predicts."""
    from families import build, config, matched
    from tolerance import fp64_twin, rounding_tolerance
    from ultralytics import YOLO

    from yoloq.artifacts import cached_artifact
    from yoloq.backends.base import Artifact
    from yoloq.backends.registry import get_backend, resolve_config
    from yoloq.config import EvalConfig, parse_config
    from yoloq.data import load_split
    from yoloq.paths import REPO_ROOT, shared_root
    from yoloq.pipeline import run
    from yoloq.postprocess import postprocess
    from yoloq.preprocess import prepare, read_image
    from yoloq.records import RecordStore

    no_tools = _tools()
    pt = build(family, tmp_path, YOLO(str(shared_root() / "models" / "yolo11n.pt")).names)
    variants = [{"format": "torch", "precision": "fp32"}] + [{"format": "ncnn", "precision": p}
                                                             for p in ("fp32", "fp16", "int8")]
    cfg = resolve_config(parse_config(config(pt, tmp_path / "out", variants, nms), REPO_ROOT))
    run(cfg, tmp_path / "out")
    recs = {r.name: r for r in RecordStore(tmp_path / "out").all()}
    if no_tools:
        assert recs["ncnn-int8"].status == "skipped" and "yoloq setup ncnn" in recs["ncnn-int8"].reason
        del recs["ncnn-int8"]
    assert all(r.ok for r in recs.values()), {n: r.reason for n, r in recs.items()}
    e2e = nms is False
    assert recs["torch-fp32"].head["branch"] == ("one2one" if e2e else "one2many")
    assert {r.head["branch"] for n, r in recs.items() if n.startswith("ncnn")} == {"one2many"}
    ref = get_backend("torch").load(Artifact(pt, "torch", "fp32", {"end2end": False, "max_det": 300}), 2)
    sample = load_split(cfg.data, REPO_ROOT).samples[0]
    x, lbs = prepare([read_image(sample.path)], 320)
    a = ref.predict(x)
    load = {n: get_backend("ncnn").load(cached_artifact(tmp_path / "out" / "artifacts" / n, recs[n].key), 2)
            for n in recs if n.startswith("ncnn")}
    b = load["ncnn-fp32"].predict(x)
    assert a.shape == b.shape
    exact = fp64_twin(ref).predict(x)
    np.testing.assert_allclose(b[:, :4], a[:, :4], atol=rounding_tolerance(a[:, :4], exact[:, :4], 0.25), rtol=1e-3)
    np.testing.assert_allclose(b[:, 4:], a[:, 4:], atol=rounding_tolerance(a[:, 4:], exact[:, 4:], 2e-3))
    post = EvalConfig(conf=0.25, iou=0.7, max_det=300, multi_label=False)
    da, db = postprocess(a, lbs, post, False)[0], postprocess(b, lbs, post, False)[0]
    assert len(da) > 0 and matched(da, db) >= 0.9
    assert np.isfinite(load["ncnn-fp16"].predict(x)).all()
    if not no_tools:
        info = recs["ncnn-int8"].artifact_info
        head = len(YOLO(str(pt)).model.model) - 1
        assert info["calibration_used"] == 4 and info["int8_layers"] > 20
        assert f"model.{head}.cv2.0.2" in info["kept_float"] and f"model.{head}.cv2.0.0.conv" not in info["kept_float"]
        q = load["ncnn-int8"].predict(x)  # a random-init model's int8 error is no measure: the contract test bounds
        assert q.shape == a.shape and np.isfinite(q).all()  # the trained YOLO11n's
        layers = get_backend("ncnn").explain(cached_artifact(tmp_path / "out" / "artifacts" / "ncnn-int8",
                                                             recs["ncnn-int8"].key), x, 2)
        assert sum(r.precision == "int8" for r in layers) == info["int8_layers"]


def test_the_scope_is_placed_by_module_name_and_refuses_a_graph_it_cannot_place(tmp_path):
    """ncnn's convolutions map one to one onto the modules the model runs (checked by shape); a graph whose
    convolutions do not line up is an error, not a scope placed on the wrong layers."""
    from ultralytics import YOLO

    from yoloq.backends.ncnn.backend import PARAM, conv_names
    from yoloq.backends.onnx_base import ultralytics_export
    from yoloq.backends.torch_scope import export_module, in_float, module_scope
    from yoloq.models import load_source

    source = load_source("yolo11n.pt")
    folder = ultralytics_export(source, tmp_path / "ncnn", format="ncnn", imgsz=320, batch=1)
    model = export_module(source, 320, False, 300, "ncnn")
    names = conv_names(model, folder / PARAM, 320)
    assert len(names) == sum(1 for _ in filter(lambda m: type(m).__name__ == "Conv2d", model.modules()))
    floats, quantized = module_scope(model, "outputs", 2)
    kept = sorted(m for m in names.values() if in_float(m, set(floats), set(quantized)))
    head = len(YOLO(str(source.path)).model.model) - 1
    assert kept == sorted(["model.0.conv", "model.1.conv", f"model.{head}.dfl.conv"]
                          + [f"model.{head}.{b}.{i}.2" for b in ("cv2", "cv3") for i in range(3)])
    lines = (folder / PARAM).read_text().splitlines()
    i = next(k for k, x in enumerate(lines) if x.startswith("Convolution") and " 0=32 " in x)
    lines[i] = lines[i].replace(" 0=32 ", " 0=31 ", 1)
    (folder / PARAM).write_text("\n".join(lines) + "\n")
    with pytest.raises(ExportError, match="cannot be placed"):
        conv_names(model, folder / PARAM, 320)


def test_missing_int8_tools_are_a_skipped_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Where ncnn's INT8 tools are not built, the INT8 variant is skipped with one line naming ``yoloq setup ncnn``;
    FP32 runs."""
    cfg = yaml.safe_load(Path("configs/smoke.yaml").read_text())
    cfg["variants"] = [{"format": "ncnn", "precision": "fp32"}, {"format": "ncnn", "precision": "int8"}]
    cfg["data"]["max_images"] = 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg | {"output": str(tmp_path / "o")}))
    monkeypatch.setenv("YOLOQ_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("YOLOQ_NCNN_TOOLS", raising=False)
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    recs = {r["name"]: r for r in map(json.loads, (tmp_path / "o" / "records.jsonl").read_text().splitlines())}
    assert recs["ncnn-fp32"]["status"] == "ok"
    assert recs["ncnn-int8"]["status"] == "skipped" and "yoloq setup ncnn" in recs["ncnn-int8"]["reason"]
