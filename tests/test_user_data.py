"""A user's own dataset end to end: a YOLO-layout one and a COCO-json one, each a YAML file in a folder of its own
outside the checkout (its images linked from the shared data), through ``yoloq run`` (scored by pycocotools against
its own labels), the report with its pictures of where INT8 differs (found wherever the run found the images, with
the run's folder elsewhere too), ``yoloq tune`` on its own tuning split, ``yoloq export`` and the Python API."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import SHARED, run_cli

pytestmark = pytest.mark.shared

SPLITS = {"val": 4, "train": 8, "tune": 4}  # evaluation, calibration and tuning images: disjoint


def _yolo_dataset(root: Path) -> Path:
    """coco128's val2017 images split three ways, their labels copied: a YOLO-layout dataset under ``root``."""
    src = SHARED / "datasets" / "coco128"
    images = sorted((src / "images" / "val2017").glob("*.jpg"))
    start = 0
    for split, n in SPLITS.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for img in images[start:start + n]:
            (root / "images" / split / img.name).symlink_to(img)
            label = src / "labels" / "val2017" / f"{img.stem}.txt"
            (root / "labels" / split / label.name).write_text(label.read_text() if label.is_file() else "")
        start += n
    names = yaml.safe_load((src / "data.yaml").read_text())["names"]
    spec = {"name": "my-yolo", "format": "yolo", "path": str(root), "names": names,
            "splits": {s: {"images": f"images/{s}", "labels": f"labels/{s}"} for s in SPLITS}}
    (root / "my-yolo.yaml").write_text(yaml.safe_dump(spec))
    return root / "my-yolo.yaml"


def _coco_dataset(root: Path) -> Path:
    """coco-mini's val2017 images split three ways, each with the official annotations of its images as a COCO json."""
    src = SHARED / "datasets" / "coco-mini"
    gt = json.loads((src / "annotations" / "instances_val2017.json").read_text())
    with_boxes = {a["image_id"] for a in gt["annotations"]}
    images = sorted((i for i in gt["images"] if i["id"] in with_boxes), key=lambda i: i["id"])
    start, splits = 0, {}
    (root / "annotations").mkdir(parents=True)
    for split, n in SPLITS.items():
        (root / split).mkdir()
        chosen = images[start:start + n]
        ids = {i["id"] for i in chosen}
        for i in chosen:
            (root / split / i["file_name"]).symlink_to(src / "val2017" / i["file_name"])
        part = {**gt, "images": chosen, "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
        (root / "annotations" / f"{split}.json").write_text(json.dumps(part))
        splits[split] = {"images": split, "annotations": f"annotations/{split}.json"}
        start += n
    (root / "my-coco.yaml").write_text(yaml.safe_dump({"name": "my-coco", "format": "coco", "path": str(root),
                                                       "splits": splits}))
    return root / "my-coco.yaml"


# the YOLO layout's run (1.5 min on 2 cores) is the full tier's; its reading is tested on coco128 in test_data
@pytest.mark.parametrize("layout", [pytest.param("yolo", marks=pytest.mark.full), "coco"])
def test_a_users_own_dataset_end_to_end(tmp_path: Path, layout: str):
    data = (_yolo_dataset if layout == "yolo" else _coco_dataset)(tmp_path / "elsewhere" / f"my-{layout}")
    cfg = {"model": "yolo11n.pt", "imgsz": 320,
           "data": {"dataset": str(data), "split": "val"},
           "calibration": {"sources": [{"dataset": str(data), "split": "train"}], "images": SPLITS["train"]},
           "variants": [{"format": "torch", "precision": "fp32"}, {"format": "onnxruntime", "precision": "int8"}],
           "latency": {"warmup": 1, "min_runs": 3, "min_seconds": 0, "threads": 2, "images": 1},
           "report": {"bootstrap": 100},
           "tune": {"data": {"dataset": str(data), "split": "tune"}, "first_images": 2, "bootstrap": 100,
                    "sensitivity": [], "accuracy_control": False},
           "output": str(tmp_path / "out")}
    config = tmp_path / "configs" / "mine.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "out" / "run"

    proc = run_cli("run", str(config), "--out", str(run), timeout=900)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    recs = {r["name"]: r for r in map(json.loads, (run / "records.jsonl").read_text().splitlines())}
    assert set(recs) == {"torch-fp32", "onnxruntime-int8"} and all(r["status"] == "ok" for r in recs.values())
    ref = recs["torch-fp32"]
    assert ref["dataset"]["name"] == f"my-{layout}" and ref["dataset"]["images"] == SPLITS["val"]
    assert Path(ref["dataset"]["file"]) == data  # outside the checkout and the shared folder: as given
    assert 0.2 < ref["metrics"]["map50_95"] <= 1.0  # YOLO11n on real COCO images, scored against their own labels

    # the report draws where INT8 differs from the dataset the run read, also from another working directory
    for old in (run / "differences").glob("*.jpg"):  # drawn by the run: the report must draw them again
        old.unlink()
    proc = run_cli("report", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (run / "report.md").read_text()
    assert "dataset not readable here" not in md
    pictures = sorted((run / "differences").glob("onnxruntime-int8-*.jpg"))
    same = "the same confident boxes as the reference on every image" in md
    assert pictures or same, md[-3000:]
    assert all(f"differences/{p.name}" in md for p in pictures)

    tuned = tmp_path / "out" / "tune"
    proc = run_cli("tune", str(config), "--variant", "onnxruntime-int8", "--candidate", "minmax", "--out", str(tuned),
                   timeout=900)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    result = json.loads((tuned / "tune.json").read_text())
    assert result["images"] == SPLITS["tune"] and [t["candidate"] for t in result["trials"]] == ["default", "minmax"]
    ran = [t for t in result["trials"] if t["status"] == "ok"]  # the baseline always; minmax unless pruned
    assert {t["status"] for t in result["trials"]} <= {"ok", "pruned"} and ran[0]["candidate"] == "default"
    assert all(0 < t["agreement"] <= 1 and t["p50_ms"] > 0 and t["images"] == SPLITS["tune"] for t in ran)
    md = (tuned / "tune.md").read_text()
    assert f"my-{layout}/tune" in md
    if not any(t["chosen"] for t in result["trials"]):  # the rule ships no INT8 slower than FP32 (at 320 under load)
        assert "**Nothing recommended**" in md and all("slower here" in t["verdict"] for t in ran)
    else:
        assert sum(t["chosen"] for t in result["trials"]) == 1

    bundle = tmp_path / "out" / "bundle"
    proc = run_cli("export", str(config), "--variant", "onnxruntime-int8", "--out", str(bundle), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(bundle.rglob("*.onnx")) and (bundle / "requirements.txt").is_file()

    import yoloq

    here = os.getcwd()
    try:  # the API resumes the CLI's run (nothing run again) and predicts on one of the user's images
        os.chdir(tmp_path)
        api_run = yoloq.run(config, out=run)
        assert {r.name for r in api_run.records} == set(recs)
        assert api_run["onnxruntime-int8"].metrics["map50_95"] == recs["onnxruntime-int8"]["metrics"]["map50_95"]
        image = next((data.parent / ("images/val" if layout == "yolo" else "val")).iterdir())
        dets = yoloq.load(run, "onnxruntime-int8").predict(str(image))
        assert len(dets.scores) > 0 and dets.boxes.shape == (len(dets.scores), 4)
    finally:
        os.chdir(here)
