"""Dataset readers: COCO json and YOLO layout give the same samples and a COCO ground truth."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from yoloq.config import CalibrationConfig, DataRef
from yoloq.data import load_split
from yoloq.data.calibration import build_calibration
from yoloq.data.yolo import coco80, read_yolo
from yoloq.errors import DataError


def test_yolo_labels_become_coco_pixel_boxes(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "000000000042.jpg"), np.zeros((200, 400, 3), np.uint8))
    (tmp_path / "labels" / "000000000042.txt").write_text("2 0.5 0.5 0.25 0.5\n0 0.1 0.2 0.1 0.2\n")
    names = coco80()[0]
    split = read_yolo("tiny", "val", tmp_path / "images", tmp_path / "labels", names)
    assert [s.image_id for s in split.samples] == [42]
    anns = sorted(split.gt["annotations"], key=lambda a: a["category_id"])
    assert anns[0]["category_id"] == 1 and anns[1]["category_id"] == 3  # person, car: COCO ids
    assert anns[1]["bbox"] == pytest.approx([150, 50, 100, 100])
    assert anns[0]["bbox"] == pytest.approx([20, 20, 40, 40])
    other = read_yolo("tiny", "val", tmp_path / "images", tmp_path / "labels", ("a", "b", "c"))
    assert other.category_ids == (0, 1, 2)


@pytest.mark.shared
def test_coco_mini_and_coco128_read_in_place():
    mini = load_split(DataRef("coco-mini", "val2017"))
    assert len(mini.samples) == 79 and len(mini.gt["annotations"]) == 624
    c128 = load_split(DataRef("coco128", "val2017"))
    assert len(c128.samples) == 128
    assert set(c128.category_ids) <= set(coco80()[1]) and len(c128.names) == 80
    # the same image id means the same file in both layouts (both are val2017 images)
    common = {s.image_id for s in mini.samples} & {s.image_id for s in c128.samples}
    assert common
    assert mini.category_map(c128.names) == c128.category_ids


@pytest.mark.shared
def test_calibration_is_disjoint_seeded_and_hashed(capsys):
    ev = load_split(DataRef("coco-mini", "val2017"))
    cfg = CalibrationConfig(images=50, seed=3)
    a, b = build_calibration(cfg, ev), build_calibration(cfg, ev)
    assert len(a.images) == 50 and a.images == b.images and a.sha256 == b.sha256
    assert a.sha256 != build_calibration(CalibrationConfig(images=50, seed=4), ev).sha256
    assert a.describe()["sources"] == ["coco-mini/train2017", "coco128/train2017"]
    everything = build_calibration(CalibrationConfig(images=10_000), ev)
    assert len(everything.images) == 208  # 80 + 128 train images, none shared
    assert "asks for 10000 images but its sources hold 208" in capsys.readouterr().err  # said, not silently cut
    assert everything.images[:50] == build_calibration(CalibrationConfig(images=50), ev).images  # one order


@pytest.mark.shared
def test_one_pool_serves_calibration_and_holdout_disjointly():
    from yoloq.data.pool import ImagePool

    ev = load_split(DataRef("coco-mini", "val2017"))
    pool = ImagePool.build(CalibrationConfig(images=200), ev)
    cal = build_calibration(CalibrationConfig(images=200), ev)
    assert [p.sample.path for p in pool.front(200)] == list(cal.images)
    held = pool.labelled(pool.back(8, after=200), ("person", "bicycle"))
    assert len(held.samples) == 8 and not ({s.path for s in held.samples} & set(cal.images))
    assert {a["category_id"] for a in held.gt["annotations"]} <= {0, 1}
    with pytest.raises(DataError, match="no held-out train images"):
        pool.back(4, after=len(pool))


@pytest.mark.shared
def test_calibration_overlapping_evaluation_is_refused():
    ev = load_split(DataRef("coco-mini", "val2017"))
    with pytest.raises(DataError, match="overlaps the evaluation images"):
        build_calibration(CalibrationConfig(sources=(DataRef("coco128", "val2017"),)), ev)


@pytest.mark.shared
def test_missing_dataset_and_split(tmp_path: Path):
    with pytest.raises(DataError, match="dataset 'nope' not found"):
        load_split(DataRef("nope"))
    with pytest.raises(DataError, match="has no split 'test2017'"):
        load_split(DataRef("coco-mini", "test2017"))
    f = tmp_path / "gone.yaml"
    f.write_text(yaml.safe_dump({"format": "coco", "path": str(tmp_path / "gone"), "splits": {}}))
    with pytest.raises(DataError, match="folder not found"):
        load_split(DataRef(str(f)))


@pytest.mark.shared
def test_a_dataset_file_can_keep_only_some_classes(tmp_path: Path):
    """``classes: [person]`` keeps every image and only person boxes (a person detector's ground truth)."""
    full = load_split(DataRef("coco1k", "val", max_images=30))
    person = load_split(DataRef("coco1k-person", "val", max_images=30))
    assert person.names == ("person",) and person.category_ids == (1,)
    assert [c["id"] for c in person.gt["categories"]] == [1]
    assert person.gt["annotations"] == [a for a in full.gt["annotations"] if a["category_id"] == 1]
    assert len(person.samples) == len(full.samples) == 30
    bad = yaml.safe_load(Path("datasets/coco1k-person.yaml").read_text()) | {"classes": ["unicorn"]}
    f = tmp_path / "unicorns.yaml"
    f.write_text(yaml.safe_dump(bad))
    with pytest.raises(DataError, match="unicorn"):
        load_split(DataRef(str(f), "val"))


@pytest.mark.shared
def test_models_built_by_yoloq_are_found_in_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from yoloq.models import resolve_model
    from yoloq.paths import shared_root

    monkeypatch.setenv("YOLOQ_CACHE", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "my-detector.pt").symlink_to(shared_root() / "models" / "yolo11n.pt")
    assert resolve_model("my-detector.pt") == (tmp_path / "models" / "my-detector.pt").resolve()
