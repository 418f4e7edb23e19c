"""TensorRT: the exact Q/DQ graph TensorRT builds, its CPU variant, the deploy bundle, and the engines themselves.

What TensorRT reads is checked on every machine. Where TensorRT and an NVIDIA GPU are present, the run builds
small FP16 and INT8 engines at imgsz 320 and the tests score and run them (their raw output against torch FP32's, as
the backend contract test does); elsewhere those variants must be skipped records naming the reason, and the engine
tests skip with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import run_cli
from onnx import numpy_helper

from yoloq.backends.registry import resolve_config
from yoloq.config import load_config, parse_config
from yoloq.paths import REPO_ROOT
from yoloq.pipeline import run
from yoloq.records import RecordStore

pytestmark = pytest.mark.shared

SMALL = {"imgsz": 320, "data": {"dataset": "coco-mini", "split": "val2017", "max_images": 6},
         "calibration": {"sources": [{"dataset": "coco-mini", "split": "train2017"}], "images": 8, "seed": 0},
         "latency": {"warmup": 1, "min_runs": 3, "min_seconds": 0, "threads": 2, "images": 2},
         "report": {"bootstrap": 0}}


def _cfg(tmp: Path) -> dict:
    d = yaml.safe_load((REPO_ROOT / "configs" / "tensorrt.yaml").read_text())
    return d | SMALL | {"output": str(tmp)}


@pytest.fixture(scope="module")
def trt_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("trt")
    run(resolve_config(parse_config(_cfg(out), REPO_ROOT)), out)
    return {"dir": out, "records": {r.name: r for r in RecordStore(out).all()}}


def _engine_unavailable(precision: str) -> str | None:
    """Why the config's TensorRT engine of ``precision`` cannot be built here (no TensorRT builder, no GPU), or None."""
    from yoloq.backends.registry import get_backend
    from yoloq.errors import BackendUnavailable
    from yoloq.models import load_source

    variant = next(v for v in load_config(REPO_ROOT / "configs" / "tensorrt.yaml").variants
                   if v.label == f"tensorrt-{precision}")
    try:
        get_backend("tensorrt").check(variant, load_source("yolo11n.pt"))
    except BackendUnavailable as e:
        return str(e)
    return None


def test_the_tensorrt_int8_graph_runs_on_the_cpu_as_its_own_variant(trt_run):
    recs = trt_run["records"]
    cpu = recs["tensorrt-int8-graph-on-cpu"]
    assert cpu.ok, cpu.reason
    assert "TensorRT INT8 graph" in cpu.artifact_info["graph"] and cpu.metrics["detections"] > 0
    ref = recs["torch-fp32"].map
    for name, precision, keep in (("tensorrt-fp16", "fp16", 0.97), ("tensorrt-int8", "int8", 0.80)):
        why = _engine_unavailable(precision)
        if why is not None:  # no GPU or TensorRT here: a skipped record with the same reason
            assert recs[name].status == "skipped" and recs[name].reason == why, recs[name].reason
        else:  # built and scored on the GPU
            assert recs[name].ok, recs[name].reason
            assert recs[name].map >= keep * ref and recs[name].latency["runs"] >= 3
            assert precision in recs[name].runtime["precision_ran"]  # the layers the engine ran, by precision


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_the_engine_builds_and_runs_on_the_gpu(trt_run, precision):
    """The run's engine loads and predicts torch FP32's raw head output within its precision's derived tolerance."""
    why = _engine_unavailable(precision)
    if why is not None:
        pytest.skip(why)
    from conftest import SHARED
    from tolerance import Errors, arithmetic, tolerance

    from yoloq.artifacts import cached_artifact
    from yoloq.backends.base import Artifact
    from yoloq.backends.registry import get_backend
    from yoloq.models import load_source
    from yoloq.preprocess import prepare, read_image

    rec = trt_run["records"][f"tensorrt-{precision}"]
    artifact = cached_artifact(trt_run["dir"] / "artifacts" / rec.name, rec.key)
    assert artifact is not None and Path(artifact.path).stat().st_size > 0, "no engine on disk"
    engine = get_backend("tensorrt").load(artifact, 2, "cuda:0")
    src = load_source("yolo11n.pt")
    ref = get_backend("torch").load(Artifact(src.path, "torch", "fp32", {"end2end": False, "max_det": 300}), 2)
    x, _ = prepare([read_image(next((SHARED / "datasets" / "coco-mini" / "val2017").glob("*.jpg")))], 320)
    y, want = engine.predict(x), ref.predict(x)
    assert y.shape == want.shape and np.isfinite(y).all()
    tol = tolerance(ref, x, arithmetic(precision, rec.runtime.get("precision_ran", precision)))
    assert Errors.of(y, want).within(tol), (Errors.of(y, want), tol)


def test_the_graph_is_tensorrt_explicit_quantization(trt_run):
    model = onnx.load(str(trt_run["dir"] / "artifacts" / "tensorrt-int8-graph-on-cpu" / "model_int8.onnx"))
    nodes = model.graph.node
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = [n for n in nodes if n.op_type == "QuantizeLinear"]
    dq = [n for n in nodes if n.op_type == "DequantizeLinear"]
    assert q and dq and not any(n.op_type.startswith("QLinear") for n in nodes)  # Q/DQ, not QOperator
    for n in q:  # activations: symmetric int8 (zero point 0, int8)
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name
    convs = [n for n in nodes if n.op_type == "Conv"]
    fed_by_dq = {n.output[0]: n for n in dq}
    weights = [fed_by_dq[c.input[1]] for c in convs if c.input[1] in fed_by_dq]
    assert weights and all(inits[d.input[1]].ndim == 1 and inits[d.input[1]].size > 1 for d in weights)  # per channel
    assert not any(v.dtype == np.int32 for v in inits.values())  # bias stays float (not int32-quantized)
    head_out = [c for c in convs if c.name.startswith("/model.23/cv") and "/conv/" not in c.name]
    assert head_out and all(c.input[1] not in fed_by_dq for c in head_out)  # the head's output convs stay float


def test_export_writes_a_bundle_for_the_device(tmp_path):
    cfg = _cfg(tmp_path / "run")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bundle"
    proc = run_cli("export", str(tmp_path / "cfg.yaml"), "--variant", "tensorrt-int8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    readme = (out / "README.md").read_text()
    assert "trtexec --onnx=tensorrt-int8.onnx --stronglyTyped --saveEngine=tensorrt-int8.engine" in readme
    assert "--int8" not in readme.replace("no `--fp16`/`--int8` flags", "")
    record = json.loads((out / "export.json").read_text())
    assert record["calibration"]["sha256"] and record["artifact_info"]["kept_float"]
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out / "tensorrt-int8.onnx")).graph.node)
    device = load_config(out / "config.yaml")  # the device's config: that exact ONNX, nothing re-calibrated
    assert [v.label for v in device.variants] == ["tensorrt-int8"]
    assert device.variants[0].options["onnx"] == "tensorrt-int8.onnx"
    bad = run_cli("export", str(tmp_path / "cfg.yaml"), "--variant", "nope", "--out", str(out))
    assert bad.returncode == 2 and "no variant 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_the_backend_uses_only_the_current_tensorrt_api():
    src = (REPO_ROOT / "yoloq" / "backends" / "tensorrt.py").read_text()
    code = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("#"))
    body = code.split('"""', 2)[2]  # past the module docstring, which names what was removed
    for gone in ("IInt8EntropyCalibrator2", "int8_calibrator", "set_calibration_profile", "BuilderFlag.INT8",
                 "BuilderFlag.FP16", "create_network(0)"):
        assert gone not in body, gone
    assert "STRONGLY_TYPED" in body and "execute_async_v3" in body
