"""Agreement with the reference: each variant's detections scored against the reference's own confident ones."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from yoloq.agreement import AGREE_CONF, StoredDetections, agreement
from yoloq.passes import detections_path

pytestmark = pytest.mark.shared


def test_agreement_is_recorded_for_every_variant(smoke_run):
    d, records = smoke_run["dir"], smoke_run["records"]
    ref = StoredDetections.load(detections_path(d, "torch-fp32"))
    assert (ref.score >= AGREE_CONF).sum() > 10  # real detections on real images: something to agree with
    assert "agreement" not in records["torch-fp32"]["metrics"]
    for name, r in records.items():
        if name == "torch-fp32" or r["status"] != "ok":
            continue
        a = r["metrics"]["agreement"]
        assert a["reference"] == "torch-fp32" and a["conf"] == AGREE_CONF
        assert a["boxes"] == (ref.score >= AGREE_CONF).sum()
        # what finalize stored is pycocotools' figure on the stored detections
        again = agreement(ref, StoredDetections.load(detections_path(d, name)))
        assert again["map50_95"] == pytest.approx(a["map50_95"], abs=1e-12)
        assert 0.0 < a["map50_95"] <= 1.0 and a["map50"] >= a["map50_95"]
    assert records["onnxruntime-fp32"]["metrics"]["agreement"]["map50_95"] > 0.99  # the same network
    int8 = [r["metrics"]["agreement"]["map50_95"] for r in records.values() if r["precision"] == "int8"
            and r["status"] == "ok"]
    assert int8 and max(int8) < 1.0  # quantization moves boxes, and agreement sees it
    assert "agrees" in (d / "report.md").read_text()


def test_agreement_measures_what_moved(smoke_run):
    ref = StoredDetections.load(detections_path(smoke_run["dir"], "torch-fp32"))
    assert agreement(ref, ref)["map50_95"] == pytest.approx(1.0)  # the reference reproduces itself
    confident = ref.score >= AGREE_CONF
    # boxes nudged by 8% of their size: found at IoU 0.5, lost at the strictest thresholds
    nudged = replace(ref, bbox=ref.bbox + np.c_[0.08 * ref.bbox[:, 2:], np.zeros((len(ref.bbox), 2))])
    a = agreement(ref, nudged)
    assert a["map50"] == pytest.approx(1.0) and a["map50_95"] < 0.95
    # half the confident boxes dropped: agreement falls, and low-score boxes are never ground truth
    keep = ~confident | (np.arange(len(ref.score)) % 2 == 0)
    dropped = replace(ref, det_image=ref.det_image[keep], category=ref.category[keep], bbox=ref.bbox[keep],
                      score=ref.score[keep])
    assert agreement(ref, dropped)["map50_95"] < 0.75
    low = ~confident
    only_low = replace(ref, det_image=ref.det_image[low], category=ref.category[low], bbox=ref.bbox[low],
                       score=ref.score[low])
    assert agreement(ref, only_low)["map50_95"] < 0.5
    with pytest.raises(ValueError, match="different images"):
        agreement(ref, replace(ref, image_ids=ref.image_ids[:-1]))


def test_stored_detections_round_trip(tmp_path):
    results = [{"image_id": 7, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.9},
               {"image_id": 9, "category_id": 18, "bbox": [5.0, 6.0, 7.0, 8.0], "score": 0.1}]
    s = StoredDetections.from_results([7, 9, 11], results)
    s.save(tmp_path / "x.detections.npz")
    back = StoredDetections.load(tmp_path / "x.detections.npz")
    assert back.results() == results and back.image_ids.tolist() == [7, 9, 11]
    empty = StoredDetections.from_results([3], [])
    assert agreement(empty, empty) == {"conf": AGREE_CONF, "boxes": 0, "map50_95": 0.0, "map50": 0.0}
