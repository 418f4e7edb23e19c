"""The one scoring loop: predict a labelled split with the shared pre/postprocessing, score with pycocotools.

:class:`HeldOutValidator` wraps it for accuracy-aware quantization: the pipeline builds one on
held-out train images and hands it to the export stage, which never imports evaluation code.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from yoloq.config import EvalConfig
from yoloq.data.types import DatasetSplit
from yoloq.decoded import decoded_items
from yoloq.evaluate import CocoEvaluator
from yoloq.postprocess import postprocess
from yoloq.progress import bar

Predict = Callable[[np.ndarray], np.ndarray]


def prepared(split: DatasetSplit, imgsz: int, skipped: list[str]) -> Iterator[tuple[Any, ...]]:
    """``split``'s images letterboxed as items ``(input, letterboxes, image_id)``, decoded once per split and
    size across variants and runs (:mod:`yoloq.decoded`).

    Unreadable images are skipped with a warning and their names appended to ``skipped``.
    """
    return decoded_items(split, imgsz, skipped)


def score_items(predict: Predict, items: Iterable[tuple[Any, ...]], split: DatasetSplit,
                class_map: tuple[int, ...], cfg: EvalConfig, end2end: bool = False,
                label: str | None = None, total: int | None = None) -> CocoEvaluator:
    """Predict items (batch 1) into a :class:`CocoEvaluator` (``evaluate()`` not yet called)."""
    evaluator = CocoEvaluator(split.gt, class_map)
    for x, lbs, image_id in bar(items, desc=label, total=total):
        evaluator.process(image_id, postprocess(predict(x), lbs, cfg, end2end)[0])
    return evaluator


def score(predict: Predict, split: DatasetSplit, class_map: tuple[int, ...], imgsz: int, cfg: EvalConfig,
          end2end: bool = False, label: str | None = None) -> tuple[CocoEvaluator, list[str]]:
    """Predict every image of ``split`` into a :class:`CocoEvaluator`; unreadable images are skipped and named."""
    skipped: list[str] = []
    ev = score_items(predict, prepared(split, imgsz, skipped), split, class_map, cfg, end2end, label,
                     total=len(split.samples))
    return ev, skipped


class HeldOutValidator:
    """mAP50-95 of a predict function on held-out train images (the export stage's ``Validator``)."""

    def __init__(self, split: DatasetSplit, imgsz: int, cfg: EvalConfig, end2end: bool) -> None:
        self.split, self.cfg, self.end2end = split, cfg, end2end
        self.items = list(prepared(split, imgsz, []))

    def __call__(self, predict: Predict, items: Sequence[tuple[Any, ...]] | None = None) -> float:
        """Score ``predict`` on ``items`` (default: every held-out image)."""
        ev = score_items(predict, self.items if items is None else items, self.split, self.split.category_ids,
                         self.cfg, self.end2end)
        return ev.evaluate().map50_95
