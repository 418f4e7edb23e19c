"""ExecuTorch (XNNPACK): FP32 through Ultralytics' exporter and INT8 through PT2E, scored through the one pipeline, on
random-init YOLOv8n (DFL head, NMS) and YOLO26n (no DFL, NMS-free one-to-one branch); its INT8 scope by module name.
Skipped with the reason where ExecuTorch is not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import unavailable

from yoloq.errors import BackendUnavailable

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module", autouse=True)
def executorch_here() -> None:
    from yoloq.backends.registry import get_backend

    try:
        get_backend("executorch").version()
    except BackendUnavailable as e:
        unavailable("ExecuTorch (pip install -e .)", e)


@pytest.mark.full  # ExecuTorch's lowering takes 1-2 min a model: YOLO11n's contract and bundle tests cover it
@pytest.mark.parametrize(("family", "nms"), [("yolov8n", None), ("yolo26n", False)], ids=["yolov8n", "yolo26n-e2e"])
def test_families_through_executorch(tmp_path, family, nms):
    """Every variant ok with the branch it ran recorded; FP32's raw output is torch's within float32 rounding; INT8
    keeps the head's decode and output convolutions float, runs and predicts."""
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

    pt = build(family, tmp_path, YOLO(str(shared_root() / "models" / "yolo11n.pt")).names)
    variants = [{"format": "torch", "precision": "fp32"}, {"format": "executorch", "precision": "int8"},
                {"format": "executorch", "precision": "fp32"}]
    cfg = resolve_config(parse_config(config(pt, tmp_path / "out", variants, nms), REPO_ROOT))
    run(cfg, tmp_path / "out")
    recs = {r.name: r for r in RecordStore(tmp_path / "out").all()}
    assert all(r.ok for r in recs.values()), {n: r.reason for n, r in recs.items()}
    e2e = nms is False  # torch runs the NMS-free branch; ExecuTorch falls back to one-to-many + NMS, as Ultralytics'
    assert recs["torch-fp32"].head["branch"] == ("one2one" if e2e else "one2many")
    assert {r.head["branch"] for n, r in recs.items() if n.startswith("executorch")} == {"one2many"}
    if e2e:
        assert "no top-k" in recs["executorch-int8"].head["reason"]
    int8 = recs["executorch-int8"].artifact_info
    assert int8["calibration_used"] == 4 and any(k.endswith("cv2.0.0") for k in int8["quantized_inside_float"])
    ref = get_backend("torch").load(Artifact(pt, "torch", "fp32", {"end2end": False, "max_det": 300}), 2)
    runtimes = {n: get_backend("executorch").load(cached_artifact(tmp_path / "out" / "artifacts" / n, recs[n].key), 2)
                for n in recs if n.startswith("executorch")}
    sample = load_split(cfg.data, REPO_ROOT).samples[0]
    x, lbs = prepare([read_image(sample.path)], 320)
    a = ref.predict(x)
    b = runtimes["executorch-fp32"].predict(x)
    assert a.shape == b.shape
    exact = fp64_twin(ref).predict(x)  # the one-to-many branch, as ExecuTorch runs it
    np.testing.assert_allclose(b[:, :4], a[:, :4], atol=rounding_tolerance(a[:, :4], exact[:, :4], 0.25),
                               rtol=1e-3)
    np.testing.assert_allclose(b[:, 4:], a[:, 4:], atol=rounding_tolerance(a[:, 4:], exact[:, 4:], 2e-3))
    post = EvalConfig(conf=0.25, iou=0.7, max_det=300, multi_label=False)
    da, db = postprocess(a, lbs, post, False)[0], postprocess(b, lbs, post, False)[0]
    assert len(da) > 0 and matched(da, db) >= 0.9
    q = runtimes["executorch-int8"].predict(x)  # INT8 runs and predicts (a random-init model's int8 error is
    assert q.shape == a.shape and np.isfinite(q).all()  # no measure: the contract test bounds the trained YOLO11n's)


def test_the_int8_scope_names_the_head_and_stem_modules():
    """``keep_head_float: outputs`` leaves the head out but quantizes its inner convolutions; ``decode`` its whole
    branches; ``none`` nothing left out; the stem's first modules stay float."""
    from families import FAMILIES  # noqa: F401 - the same YAMLs the family tests build
    from ultralytics import YOLO

    from yoloq.backends.torch_scope import module_scope

    model = YOLO("yolo11n.yaml").model
    floats, quantized = module_scope(model, "outputs", 2)
    assert floats == ["model.0", "model.1", "model.23"]
    assert "model.23.cv2.0.0" in quantized and "model.23.cv3.2.1" in quantized
    assert not any(q.endswith(".2") and q.count(".") == 4 for q in quantized)  # the output convolutions stay float
    floats, quantized = module_scope(model, "decode", 0)
    assert floats == ["model.23"] and "model.23.cv2.0" in quantized and "model.23.cv3.2" in quantized
    assert module_scope(model, "none", 0) == ([], [])


def test_a_missing_executorch_is_a_skipped_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Without the package the variant is skipped with one line naming the install; the rest runs."""
    import importlib.util

    import yaml
    from conftest import run_cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    from yoloq.backends.registry import get_backend

    with pytest.raises(BackendUnavailable, match="pip install executorch"):
        get_backend("executorch").version()
    cfg = yaml.safe_load(Path("configs/smoke.yaml").read_text())
    cfg["variants"] = [{"format": "onnxruntime", "precision": "fp32"}, {"format": "executorch", "precision": "int8"}]
    cfg["data"]["max_images"] = 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg | {"output": str(tmp_path / "o")}))
    env_block = tmp_path / "sitecustomize.py"  # the CLI runs in its own process: hide the package there too
    env_block.write_text("import sys\nsys.modules['executorch'] = None\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    import json

    recs = {r["name"]: r for r in map(json.loads, (tmp_path / "o" / "records.jsonl").read_text().splitlines())}
    assert recs["onnxruntime-fp32"]["status"] == "ok"
    assert recs["executorch-int8"]["status"] == "skipped" and "executorch" in recs["executorch-int8"]["reason"]
