"""Score a predict function on a labelled split: shared preprocessing, postprocessing and pycocotools."""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from yoloq.config import EvalConfig
from yoloq.data.types import DatasetSplit
from yoloq.errors import DataError
from yoloq.evaluate import CocoEvaluator
from yoloq.postprocess import postprocess
from yoloq.preprocess import prepare, read_image
from yoloq.progress import bar


def score(predict: Callable[[np.ndarray], np.ndarray], split: DatasetSplit, class_map: tuple[int, ...], imgsz: int,
          cfg: EvalConfig, end2end: bool = False, label: str | None = None) -> tuple[CocoEvaluator, list[str]]:
    """Predict every image of ``split`` (batch 1) into a :class:`CocoEvaluator` (``evaluate()`` not yet called).

    Unreadable images are skipped with a warning and returned by name.
    """
    evaluator = CocoEvaluator(split.gt, class_map)
    skipped = list(split.unreadable)
    for s in bar(split.samples, desc=label):
        try:
            img = read_image(s.path)
        except DataError:
            print(f"  warning: skipping unreadable image {s.path.name}", file=sys.stderr)
            skipped.append(s.path.name)
            continue
        x, lbs = prepare([img], imgsz)
        evaluator.process(s.image_id, postprocess(predict(x), lbs, cfg, end2end)[0])
    return evaluator, skipped
