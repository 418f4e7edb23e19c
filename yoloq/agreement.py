"""Agreement with the reference: how closely a variant reproduces the reference model's own detections.

mAP against ground truth on a hundred images moves by about a point between two variants whose outputs
differ only by quantization noise (a box nudged across an IoU threshold on one image, a score
reordered on another), so it cannot rank INT8 settings whose true differences are smaller than that.
Scoring a variant's detections with pycocotools against the reference's confident detections (score >=
``AGREE_CONF``, the deployment threshold, as ground truth) measures only what quantization changed, over
every confident box: the reference scores 1.0 against itself, and a variant loses agreement wherever it
moves, drops, relabels or adds a confident box. It complements, never replaces, mAP against the
dataset's own ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from yoloq.bootstrap import PerImageEval
from yoloq.evaluate import CocoEvaluator

AGREE_CONF = 0.25


@dataclass(frozen=True)
class StoredDetections:
    """One variant's detections on the evaluation images, as COCO results (boxes in original pixels)."""

    image_ids: np.ndarray  # every processed image, in processing order
    det_image: np.ndarray  # [N] image id of each detection
    category: np.ndarray  # [N] COCO category id
    bbox: np.ndarray  # [N, 4] xywh
    score: np.ndarray  # [N]

    @classmethod
    def from_results(cls, image_ids: Sequence[int], results: Sequence[Mapping[str, Any]]) -> StoredDetections:
        """From a :class:`~yoloq.evaluate.CocoEvaluator`'s image ids and results list."""
        return cls(np.asarray(image_ids, np.int64), np.asarray([r["image_id"] for r in results], np.int64),
                   np.asarray([r["category_id"] for r in results], np.int64),
                   np.asarray([r["bbox"] for r in results], np.float64).reshape(-1, 4),
                   np.asarray([r["score"] for r in results], np.float64))

    def save(self, path: Path) -> None:
        """Store as one ``.npz`` (written aside, then moved into place)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial.npz")
        np.savez_compressed(tmp, image_ids=self.image_ids, det_image=self.det_image, category=self.category,
                            bbox=self.bbox, score=self.score)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> StoredDetections:
        """Read what :meth:`save` wrote."""
        z = np.load(path)
        return cls(z["image_ids"], z["det_image"], z["category"], z["bbox"], z["score"])

    def subset(self, image_ids: np.ndarray) -> StoredDetections:
        """The detections on ``image_ids`` only."""
        keep = np.isin(self.det_image, image_ids)
        return StoredDetections(self.image_ids[np.isin(self.image_ids, image_ids)], self.det_image[keep],
                                self.category[keep], self.bbox[keep], self.score[keep])

    def results(self) -> list[dict[str, Any]]:
        """The COCO results list."""
        return [{"image_id": int(i), "category_id": int(c), "bbox": [float(x) for x in b], "score": float(s)}
                for i, c, b, s in zip(self.det_image, self.category, self.bbox, self.score)]


def agreement(reference: StoredDetections, variant: StoredDetections, conf: float = AGREE_CONF) -> dict[str, Any]:
    """pycocotools mAP50-95 and mAP50 of ``variant`` against ``reference``'s detections with score >= ``conf``.

    Raises:
        ValueError: When the two were not made on the same images.
    """
    return agreement_eval(reference, variant, conf)[0]


def agreement_eval(reference: StoredDetections, variant: StoredDetections, conf: float = AGREE_CONF
                   ) -> tuple[dict[str, Any], PerImageEval | None]:
    """:func:`agreement` and its per-image matches (for paired intervals between two variants' agreements;
    None when the reference has no confident box).

    Raises:
        ValueError: When the two were not made on the same images.
    """
    if not np.array_equal(np.sort(reference.image_ids), np.sort(variant.image_ids)):
        raise ValueError("the variant and the reference were evaluated on different images")
    keep = reference.score >= conf
    cats = sorted(set(reference.category[keep].tolist()))
    gt = {"images": [{"id": int(i)} for i in reference.image_ids],
          "categories": [{"id": c, "name": str(c)} for c in cats],
          "annotations": [{"id": k + 1, "image_id": int(i), "category_id": int(c), "bbox": [float(x) for x in b],
                           "area": float(b[2] * b[3]), "iscrowd": 0}
                          for k, (i, c, b) in enumerate(zip(reference.det_image[keep], reference.category[keep],
                                                            reference.bbox[keep]))]}
    out = {"conf": conf, "boxes": int(keep.sum()), "map50_95": 0.0, "map50": 0.0}
    if not cats:
        return out, None
    known = set(cats)
    ev = CocoEvaluator(gt, cats)
    ev.add(variant.image_ids.tolist(), [r for r in variant.results() if r["category_id"] in known])
    m = ev.evaluate()
    return out | {"map50_95": m.map50_95, "map50": m.map50}, ev.per_image()
