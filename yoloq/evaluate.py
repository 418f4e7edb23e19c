"""COCO evaluation with pycocotools, apart from any runtime: detections in, typed metrics out."""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from yoloq.bootstrap import PerImageEval, collect
from yoloq.postprocess import Detections

STAT_NAMES = ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large",
              "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")


@dataclass(frozen=True)
class CocoMetrics:
    """The twelve COCO bbox stats (-1 where undefined), per-class AP50-95 and the image count."""

    map50_95: float
    map50: float
    map75: float
    map_small: float
    map_medium: float
    map_large: float
    ar1: float
    ar10: float
    ar100: float
    ar_small: float
    ar_medium: float
    ar_large: float
    per_class: Mapping[str, float] = field(default_factory=dict)
    images: int = 0
    detections: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the record."""
        return asdict(self) | {"per_class": dict(self.per_class)}


class CocoEvaluator:
    """Collect detections image by image, then evaluate them with ``COCOeval`` (bbox).

    Args:
        gt: The COCO ground truth dict (images, annotations, categories).
        category_ids: ``category_ids[k]`` is the COCO category id of model class ``k``.
    """

    def __init__(self, gt: Mapping[str, Any], category_ids: Sequence[int]) -> None:
        from pycocotools.coco import COCO

        self._coco = COCO()
        self._coco.dataset = copy.deepcopy(dict(gt))
        with contextlib.redirect_stdout(io.StringIO()):
            self._coco.createIndex()
        self._cats = np.asarray(category_ids, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget every processed image."""
        self._results: list[dict[str, Any]] = []
        self._image_ids: list[int] = []
        self._cocoeval: Any = None

    def process(self, image_id: int, det: Detections) -> None:
        """Add one image's detections (boxes in original pixels)."""
        self._image_ids.append(int(image_id))
        xywh = det.boxes.astype(np.float64).copy()
        xywh[:, 2:] -= xywh[:, :2]
        iid = int(image_id)
        cats = self._cats[np.asarray(det.classes, np.int64)].tolist()
        scores = np.asarray(det.scores).astype(np.float64).tolist()
        self._results.extend({"image_id": iid, "category_id": c, "bbox": [round(x, 3) for x in b],
                              "score": round(s, 5)} for b, s, c in zip(xywh.tolist(), scores, cats))

    @property
    def image_ids(self) -> list[int]:
        """The processed images' ids, in processing order."""
        return list(self._image_ids)

    def add(self, image_ids: Sequence[int], results: Sequence[Mapping[str, Any]]) -> None:
        """Add images another evaluator processed (one shard of a split): ids and COCO results, in order.

        Shards added in image order give the same results list, so the same ``COCOeval``, as one pass.
        """
        self._image_ids.extend(int(i) for i in image_ids)
        self._results.extend(dict(r) for r in results)

    @property
    def results(self) -> list[dict[str, Any]]:
        """The detections as a COCO results list (what ``--save-json`` style tools write)."""
        return list(self._results)

    def evaluate(self) -> CocoMetrics:
        """Run COCOeval on the processed images only and return the metrics."""
        from pycocotools.cocoeval import COCOeval

        n = len(set(self._image_ids))
        self._cocoeval = None
        if not self._results:
            return CocoMetrics(*([0.0] * 12), per_class={}, images=n, detections=0)
        with contextlib.redirect_stdout(io.StringIO()):
            dt = self._coco.loadRes(copy.deepcopy(self._results))
            ev = COCOeval(self._coco, dt, "bbox")
            ev.params.imgIds = sorted(set(self._image_ids))
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        self._cocoeval = ev
        stats = [float(x) for x in ev.stats]
        precision = ev.eval["precision"]  # [T, R, K, A, M]
        per_class = {}
        for k, cid in enumerate(ev.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            if p.size:  # only classes with ground truth in the evaluated images
                per_class[self._coco.cats[cid]["name"]] = float(p.mean())
        return CocoMetrics(*stats, per_class=per_class, images=n, detections=len(self._results))

    def per_image(self) -> PerImageEval | None:
        """The last evaluation's per-image matches (for bootstrap intervals); None before or without detections."""
        return collect(self._cocoeval) if self._cocoeval is not None else None
