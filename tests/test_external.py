"""A team's own export beside yoloq's: Ultralytics' OpenVINO INT8 export of YOLO11n (made here with Ultralytics'
exporter, calibrated on train images) evaluated and timed side by side with yoloq's variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from export_ultralytics import ultralytics_openvino_int8


def _config(tmp_path: Path, artifact: Path, imgsz: int = 320) -> Path:
    cfg = yaml.safe_load(Path("configs/smoke.yaml").read_text())
    cfg["imgsz"] = imgsz
    cfg["variants"] = [{"format": "torch", "precision": "fp32"}, {"format": "openvino", "precision": "fp32"},
                       {"format": "openvino", "precision": "int8"},
                       {"format": "openvino", "precision": "int8", "name": "ultralytics-openvino-int8",
                        "artifact": str(artifact)}]
    p = tmp_path / f"compare-{imgsz}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.shared
@pytest.mark.full  # Ultralytics' own INT8 export with its calibration: about 2 min
def test_ultralytics_own_int8_export_runs_beside_yoloqs(tmp_path: Path):
    folder = ultralytics_openvino_int8(tmp_path / "ul", 320, fraction=0.25)
    out = tmp_path / "run"
    proc = run_cli("run", str(_config(tmp_path, folder)), "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = {r["name"]: r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())}
    theirs, ours = recs["ultralytics-openvino-int8"], recs["openvino-int8"]
    assert theirs["status"] == "ok" and ours["status"] == "ok"
    info = theirs["artifact_info"]
    assert info["external"] and info["metadata"]["imgsz"] == [320, 320] and info["metadata"]["classes"] == 80
    assert theirs["options"] == {} and theirs["runtime"]["precision_ran"].startswith("int8")
    ref = recs["torch-fp32"]["metrics"]["map50_95"]
    assert theirs["metrics"]["map50_95"] > 0.8 * ref  # a real INT8 model, scored by the one evaluator
    assert theirs["metrics"]["map_drop_ci"]["lo"] <= theirs["metrics"]["map_drop_ci"]["hi"]
    assert theirs["latency"]["group"] == ours["latency"]["group"]  # timed side by side with yoloq's variants
    assert "ultralytics-openvino-int8" in (out / "report.md").read_text()
    # exported for another input size: that variant fails with the reason, the others run
    proc = run_cli("run", str(_config(tmp_path, folder, imgsz=352)), "--out", str(tmp_path / "run352"), timeout=900)
    assert proc.returncode == 1
    bad = {r["name"]: r for r in map(json.loads, (tmp_path / "run352" / "records.jsonl").read_text().splitlines())}
    assert bad["ultralytics-openvino-int8"]["status"] == "failed"
    assert "exported at imgsz [320]" in bad["ultralytics-openvino-int8"]["reason"]
    assert bad["openvino-int8"]["status"] == "ok"


def test_options_do_not_apply_to_an_existing_export(tmp_path: Path):
    cfg = _config(tmp_path, tmp_path / "x")
    data = yaml.safe_load(cfg.read_text())
    data["variants"][-1]["options"] = {"preset": "mixed"}
    cfg.write_text(yaml.safe_dump(data))
    proc = run_cli("run", str(cfg), "--out", str(tmp_path / "o"), timeout=120)
    assert proc.returncode == 2 and "do not apply" in proc.stderr and "Traceback" not in proc.stderr
