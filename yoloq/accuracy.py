"""The one scoring loop: predict a labelled split with the shared pre/postprocessing, score with pycocotools.

:class:`HeldOutValidator` wraps it for accuracy-aware quantization: the pipeline builds one on
held-out train images and hands it to the export stage, which never imports evaluation code.
"""

from __future__ import annotations

from collections import deque
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


def _in_order(predict: Predict, items: Iterable[tuple[Any, ...]], in_flight: int
              ) -> Iterator[tuple[np.ndarray, tuple[Any, ...]]]:
    """``(predict(item[0]), item)`` in the items' order, with up to ``in_flight`` predictions running at once (a
    runtime whose ``predict`` serves several requests in parallel, each on its own batch-1 input)."""
    if in_flight <= 1:
        for item in items:
            yield predict(item[0]), item
        return
    from concurrent.futures import ThreadPoolExecutor

    pending: deque = deque()
    with ThreadPoolExecutor(in_flight) as pool:
        for item in items:
            pending.append((pool.submit(predict, item[0]), item))
            if len(pending) > in_flight:
                fut, done = pending.popleft()
                yield fut.result(), done
        while pending:
            fut, done = pending.popleft()
            yield fut.result(), done


def score_items(predict: Predict, items: Iterable[tuple[Any, ...]], split: DatasetSplit,
                class_map: tuple[int, ...], cfg: EvalConfig, end2end: bool = False,
                label: str | None = None, total: int | None = None, in_flight: int = 1) -> CocoEvaluator:
    """Predict items (batch 1) into a :class:`CocoEvaluator` (``evaluate()`` not yet called); ``in_flight``
    predictions at once where the runtime serves several (the detections are the same, in the same order)."""
    evaluator = CocoEvaluator(split.gt, class_map)
    for raw, (_, lbs, image_id) in bar(_in_order(predict, items, in_flight), desc=label, total=total):
        evaluator.process(image_id, postprocess(raw, lbs, cfg, end2end)[0])
    return evaluator


def score(predict: Predict, split: DatasetSplit, class_map: tuple[int, ...], imgsz: int, cfg: EvalConfig,
          end2end: bool = False, label: str | None = None, in_flight: int = 1) -> tuple[CocoEvaluator, list[str]]:
    """Predict every image of ``split`` into a :class:`CocoEvaluator`; unreadable images are skipped and named."""
    skipped: list[str] = []
    ev = score_items(predict, prepared(split, imgsz, skipped), split, class_map, cfg, end2end, label,
                     total=len(split.samples), in_flight=in_flight)
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
