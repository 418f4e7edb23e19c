"""INT8 accuracy tools on real models: sensitivity ranking, accuracy control, QAT (tiny, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import SHARED, run_cli

pytestmark = pytest.mark.shared

TINY = {"model": "yolo11n.pt", "imgsz": 320, "data": {"dataset": "coco-mini", "max_images": 8},
        "calibration": {"sources": [{"dataset": "coco-mini", "split": "train2017"}], "images": 24},
        "latency": {"warmup": 1, "min_runs": 3, "min_seconds": 0, "images": 2}, "report": {"bootstrap": 0}}


def write(tmp_path: Path, **changes) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(json.loads(json.dumps(TINY)) | changes))
    return p


def records(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())}


def test_sensitivity_ranks_blocks_on_calibration_images(tmp_path: Path):
    proc = run_cli("sensitivity", "configs/smoke.yaml", "--variant", "onnxruntime-int8", "--images", "2",
                   "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    d = tmp_path / "sensitivity-onnxruntime-int8-block"
    rows = (d / "sensitivity.csv").read_text().splitlines()[1:]
    assert len(rows) >= 20 and (d / "sensitivity.png").stat().st_size > 5000
    groups = [r.split(",")[1] for r in rows]
    assert "model.23" in groups and "model.0" in groups
    sqnr = [float(r.split(",")[3]) for r in rows]
    assert sqnr == sorted(sqnr)  # worst first


def test_litert_sensitivity_ranks_blocks_on_calibration_images(tmp_path: Path):
    """LiteRT: each top-level module alone as the variant builds it (its ranges, float scope and stored weights),
    SQNR of the raw output against FP32 on calibration images; the stem the default computes in float still
    loses to its int8-stored weights, as the variant does."""
    proc = run_cli("sensitivity", "configs/smoke.yaml", "--variant", "litert-int8", "--images", "2",
                   "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [r.split(",") for r in (tmp_path / "sensitivity-litert-int8-block" / "sensitivity.csv").read_text()
            .splitlines()[1:]]
    sqnr = {r[1]: float(r[3]) for r in rows}
    assert set(sqnr) == {f"model.{i}" for i in range(24)}  # YOLO11n: 23 modules and the Detect head
    # every block loses something, far below the signal: the stem (keep_stem_float: 3, the default) through its
    # int8-stored weights only, the rest through int8 weights and activations
    assert all(10 < v < 90 for v in sqnr.values())
    # the stem's weight rules reach only the stem's groups: were they in every group's model, no block could
    # lose less than the stem blocks do
    assert max(sqnr.values()) > max(sqnr[f"model.{i}"] for i in range(3)) + 6
    assert [float(r[3]) for r in rows] == sorted(sqnr.values())  # worst first
    layer = run_cli("sensitivity", "configs/smoke.yaml", "--variant", "litert-int8", "--granularity", "layer",
                    "--out", str(tmp_path))
    assert layer.returncode == 2 and "ranks blocks" in layer.stderr and "Traceback" not in layer.stderr


def test_sensitivity_refuses_a_float_variant():
    proc = run_cli("sensitivity", "configs/smoke.yaml", "--variant", "onnxruntime-fp32")
    assert proc.returncode == 2 and "int8 variant" in proc.stderr


@pytest.mark.parametrize("fmt", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.full)])
def test_accuracy_control_records_what_stayed_float(tmp_path: Path, fmt: str):
    options = {"accuracy_control": True, "max_drop": 0.0, "calibration_images": 16, "holdout_images": 4,
               "keep_head_float": "none", "max_float_groups": 2}
    cfg = write(tmp_path, variants=[{"format": fmt, "precision": "int8", "options": options}])
    proc = run_cli("run", str(cfg), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = records(tmp_path / "out")[f"{fmt}-int8"]
    ac = r["artifact_info"]["accuracy_control"]
    assert ac["heldout_images"] == 4 and ac["max_drop"] == 0.0
    if fmt == "onnxruntime":
        assert ac["met"] == (ac["heldout_fp32_map"] - ac["heldout_int8_map"] <= 0.0)
        assert len(ac["float_groups"]) == len(ac["steps"]) - 1 <= 2
        assert all(any(n.startswith(f"/{g.split('/')[0]}/") for n in r["artifact_info"]["kept_float"])
                   for g in ac["float_groups"])
    else:
        assert ac["validations"] >= 1 and "quantize_with_accuracy_control" in r["artifact_info"]["quantizer"]
        assert ac["max_float_groups"] == 2  # NNCF's max_num_iterations: one group back to float per iteration
    assert r["metrics"]["map50_95"] > 0.2


@pytest.mark.full  # about 1 min of fine-tuning; CI runs the full tier
def test_tiny_qat_end_to_end(tmp_path: Path):
    cfg = write(tmp_path, variants=[{"format": "onnxruntime", "precision": "int8"},
                                    {"format": "openvino", "precision": "int8"}],
                qat={"epochs": 1, "images": 16, "batch": 4, "imgsz": 320, "start": "yolo11n-train.pt"},
                report={"bootstrap": 200})
    out = tmp_path / "out"
    proc = run_cli("qat", str(cfg), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(out)
    for name in ("onnxruntime-int8-qat", "openvino-int8-qat"):
        assert recs[name]["status"] == "ok", recs[name]["reason"]
        assert "quantization-aware" in recs[name]["artifact_info"]["quantizer"]
        # 1 epoch on 16 images from the trainable checkpoint: a sanity band, not a target (from yolo11n.pt,
        # whose BatchNorms do not train, it fell to 0.026)
        assert recs[name]["metrics"]["map50_95"] > 0.15
        assert recs[name]["pair"]["start"] == "yolo11n-train.pt"
    assert "onnxruntime-int8-qat" in (out / "report.md").read_text()
    for name in ("onnxruntime-int8", "openvino-int8"):  # PTQ - QAT, paired interval, in the record and report
        c = recs[f"{name}-qat"]["metrics"]["qat_vs_ptq"]
        assert c["ptq"] == name and c["lo"] <= c["drop"] <= c["hi"] and c["resamples"] == 200
        ptq_minus_qat = recs[name]["metrics"]["map50_95"] - recs[f"{name}-qat"]["metrics"]["map50_95"]
        assert abs(c["drop"] - ptq_minus_qat) < 1e-9
    assert "## QAT against PTQ" in (out / "report.md").read_text()
    import onnx  # the QAT export ships int8 weights, not float weights behind QuantizeLinear

    qat = onnx.load(str(next((out / "artifacts" / "qat").glob("*-qat-int8-*.onnx"))))
    assert sum(t.data_type == onnx.TensorProto.INT8 for t in qat.graph.initializer) >= 80
    assert recs["onnxruntime-int8-qat"]["size_mb"] < 0.35 * (SHARED / "models" / "yolo11n.onnx").stat().st_size / 1e6
    train_imgs = {p.name for p in (out / "artifacts" / "qat" / "data" / "images").rglob("*.jpg")}
    eval_imgs = {p.name for p in (SHARED / "datasets" / "coco-mini" / "val2017").glob("*.jpg")}
    assert train_imgs and not (train_imgs & eval_imgs)
