"""Runs that survive: every bad input answered in one line, failures contained, crashes resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import SHARED, run_cli

from yoloq.paths import REPO_ROOT

pytestmark = pytest.mark.shared

TINY = {"imgsz": 320, "data": {"dataset": "coco-mini", "max_images": 4},
        "calibration": {"sources": [{"dataset": "coco-mini", "split": "train2017"}], "images": 4},
        "latency": {"warmup": 1, "min_runs": 3, "min_seconds": 0, "images": 2},
        "report": {"bootstrap": 0}, "model": "yolo11n.pt",
        "variants": [{"format": "onnxruntime", "precision": "fp32"}]}

AT_THE_END = ("map_drop_ci", "agreement")  # computed by finalize, once every variant has run


def write(tmp_path: Path, name: str = "cfg.yaml", **changes) -> Path:
    # its own output folder: parallel tests never share one (a second run there is refused: the folder is in use)
    cfg = json.loads(json.dumps(TINY)) | {"output": str(tmp_path / "results")} | changes
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def records(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())}


def coco_copy(tmp_path: Path, n: int = 3) -> Path:
    """A small COCO-format dataset in tmp_path: n val images (symlinked, not copied) and their annotations."""
    src = SHARED / "datasets" / "coco-mini"
    gt = json.loads((src / "annotations" / "instances_val2017.json").read_text())
    gt["images"] = sorted(gt["images"], key=lambda im: im["file_name"])[:n]
    ids = {im["id"] for im in gt["images"]}
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in ids]
    root = tmp_path / "ds"
    (root / "val").mkdir(parents=True)
    (root / "ann.json").write_text(json.dumps(gt))
    for im in gt["images"]:
        (root / "val" / im["file_name"]).symlink_to(src / "val2017" / im["file_name"])
    (tmp_path / "ds.yaml").write_text(yaml.safe_dump(
        {"format": "coco", "path": str(root), "splits": {"val2017": {"images": "val", "annotations": "ann.json"}}}))
    return root


def bad_input_cases(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    """Each row: config changes, and the words the one-line error must contain."""
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint" * 8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.yaml").write_text(yaml.safe_dump(
        {"format": "yolo", "path": str(tmp_path / "empty"), "names": ["a"], "splits": {"val2017": {"images": "."}}}))
    (tmp_path / "noann.yaml").write_text(yaml.safe_dump(
        {"format": "coco", "path": str(SHARED / "datasets" / "coco-mini"),
         "splits": {"val2017": {"images": "val2017", "annotations": "annotations/missing.json"}}}))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(
        {"format": "yolo", "path": str(SHARED / "datasets" / "coco128"), "names": ["cat", "dog"],
         "splits": {"val2017": {"images": "images/val2017", "labels": "labels/none"}}}))
    return {
        "unknown key": ({"imgsz2": 320}, "unknown config key 'imgsz2'; did you mean 'imgsz'?"),
        "wrong type": ({"imgsz": "large"}, "config key 'imgsz': got 'large', expected an integer"),
        "out of range": ({"eval": {"iou": 1.5}}, "config key 'eval.iou': got 1.5, expected 0 < iou <= 1"),
        "unknown format": ({"variants": [{"format": "mnn"}]}, "unknown format 'mnn'; valid formats:"),
        "unknown precision": ({"variants": [{"format": "litert", "precision": "int4"}]},
                              "config key 'variants[0].precision': got 'int4', expected one of fp32, fp16, int8"),
        "model missing": ({"model": str(tmp_path / "nope.pt")}, "model file not found"),
        "model unreadable": ({"model": str(tmp_path / "bad.pt")}, "cannot read model file bad.pt"),
        "dataset folder missing": ({"data": {"dataset": "coco2017"}}, "dataset 'coco2017' folder not found"),
        "annotation file missing": ({"data": {"dataset": str(tmp_path / "noann.yaml")}}, "annotation file not found"),
        "no images": ({"data": {"dataset": str(tmp_path / "empty.yaml")}}, "no images in"),
        "class names disagree": ({"data": {"dataset": str(tmp_path / "other.yaml")}},
                                 "class names of the model and dataset"),
        "calibration overlap": ({"calibration": {"sources": [{"dataset": "coco128", "split": "val2017"}]}},
                                "overlaps the evaluation images"),
        "output not writable": ({"output": "/proc/yoloq"}, "cannot be written"),
    }


CASES = ["unknown key", "wrong type", "out of range", "unknown format", "unknown precision", "model missing",
         "model unreadable", "dataset folder missing", "annotation file missing", "no images",
         "class names disagree", "calibration overlap", "output not writable"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_exit_2(tmp_path: Path, case: str):
    changes, words = bad_input_cases(tmp_path)[case]
    proc = run_cli("run", str(write(tmp_path, **changes)))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if x.startswith("yoloq: error:")]
    assert len(lines) == 1 and words in lines[0], proc.stderr[-1500:]


def test_not_a_detector(tmp_path: Path):
    from ultralytics import YOLO

    YOLO("yolo11n-cls.yaml").save(str(tmp_path / "cls.pt"))
    proc = run_cli("run", str(write(tmp_path, model=str(tmp_path / "cls.pt"))))
    assert proc.returncode == 2 and "is a 'classify' model, not a detector" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_flag_shows_traceback(tmp_path: Path):
    proc = run_cli("--debug", "run", str(write(tmp_path, imgsz2=1)))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_corrupt_image_is_skipped_counted_and_the_rest_evaluated(tmp_path: Path):
    root = coco_copy(tmp_path, n=3)
    victim = sorted((root / "val").iterdir())[1]
    data = victim.resolve().read_bytes()
    victim.unlink()
    victim.write_bytes(data[: len(data) // 50])  # truncated JPEG: header only
    proc = run_cli("run", str(write(tmp_path, data={"dataset": str(tmp_path / "ds.yaml")})), "--out",
                   str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"skipping unreadable image {victim.name}" in proc.stderr
    r = records(tmp_path / "out")["onnxruntime-fp32"]
    assert r["metrics"]["skipped_images"] == [victim.name] and r["metrics"]["images"] == 2
    assert r["dataset"]["images"] == 2  # the record counts what was scored, not the files in the folder


def test_missing_backend_is_skipped_with_install_hint(tmp_path: Path):
    shadow = tmp_path / "shadow" / "openvino"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('openvino is not installed here')\n")
    cfg = write(tmp_path, variants=[{"format": "openvino"}, {"format": "onnxruntime"},
                                    {"format": "tensorrt", "precision": "fp16", "device": "cuda:0"}])
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "shadow"))
    proc = subprocess.run([sys.executable, "-m", "yoloq", "run", str(cfg), "--out", str(tmp_path / "out")],
                          cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = records(tmp_path / "out")
    assert recs["openvino-fp32"]["status"] == "skipped"
    assert "pip install openvino" in recs["openvino-fp32"]["reason"]
    assert recs["onnxruntime-fp32"]["status"] == "ok"
    import torch

    if not torch.cuda.is_available():
        assert recs["tensorrt-fp16-cuda0"]["status"] == "skipped"
        assert "no CUDA device" in recs["tensorrt-fp16-cuda0"]["reason"]


def test_one_failed_export_is_contained(tmp_path: Path):
    out = tmp_path / "out"
    (out / "artifacts").mkdir(parents=True)
    (out / "artifacts" / "onnxruntime-int8").write_text("a file where the export folder should be")
    cfg = write(tmp_path, variants=[{"format": "onnxruntime"}, {"format": "onnxruntime", "precision": "int8"},
                                    {"format": "openvino"}])
    proc = run_cli("run", str(cfg), "--out", str(out))
    assert proc.returncode == 1
    recs = records(out)
    assert recs["onnxruntime-int8"]["status"] == "failed" and "Error" in recs["onnxruntime-int8"]["reason"]
    assert recs["onnxruntime-fp32"]["status"] == "ok" and recs["openvino-fp32"]["status"] == "ok"
    assert (out / "logs" / "onnxruntime-int8.log").read_text().startswith("Traceback")
    assert "failed" in (out / "report.md").read_text()


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 900) -> None:
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.time() - t0 < timeout
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.full  # 2.5 min; resume after an interruption is also checked by the Ray driver-crash test
def test_sigkill_during_export_and_evaluation_then_resume(smoke_run, tmp_path: Path):
    """Kill a run mid-export, then mid-evaluation; the re-run loses nothing and matches an uninterrupted run."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "yoloq", "run", "configs/smoke.yaml", "--out", str(out)]
    log = tmp_path / "log.txt"

    def start() -> subprocess.Popen:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"),
                                start_new_session=True)

    # 1: during the ONNX Runtime INT8 export (after its folder appears, before its manifest)
    proc = start()
    _kill_when(proc, lambda: (out / "artifacts" / "onnxruntime-int8").is_dir())
    first = records(out)
    assert "onnxruntime-int8" not in first and first["torch-fp32"]["status"] == "ok"
    # 2: during OpenVINO INT8's evaluation (its export is finished: the manifest exists)
    proc = start()
    _kill_when(proc, lambda: (out / "artifacts" / "openvino-int8" / "artifact.json").is_file())
    second = records(out)
    assert "openvino-int8" not in second and second["torch-fp32"] == first["torch-fp32"]
    # 3: the re-run finishes only what is missing, reusing the finished export
    done = run_cli("run", "configs/smoke.yaml", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "openvino-int8: reusing cached export" in done.stderr
    final = records(out)
    assert set(final) == set(smoke_run["records"])
    for line in (out / "records.jsonl").read_text().splitlines():
        json.loads(line)  # never a torn line
    for name, r in final.items():  # the same numbers as the uninterrupted run: deterministic
        a = {k: v for k, v in r["metrics"].items() if k not in AT_THE_END}
        b = {k: v for k, v in smoke_run["records"][name]["metrics"].items() if k not in AT_THE_END}
        assert a == b, name
