"""TensorRT, checkable before a GPU: the exact Q/DQ graph TensorRT builds, its CPU variant, the deploy bundle.

No GPU here: the engine build and runtime are not run (their variants are skipped with the reason);
what TensorRT reads is checked on the CPU.
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


def test_the_tensorrt_int8_graph_runs_on_the_cpu_as_its_own_variant(trt_run):
    recs = trt_run["records"]
    cpu = recs["tensorrt-int8-graph-on-cpu"]
    assert cpu.ok, cpu.reason
    assert "TensorRT INT8 graph" in cpu.artifact_info["graph"] and cpu.metrics["detections"] > 0
    for name in ("tensorrt-fp16", "tensorrt-int8"):  # no GPU or TensorRT here: skipped, with the reason
        assert recs[name].status == "skipped" and ("TensorRT" in recs[name].reason or "CUDA" in recs[name].reason)


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
