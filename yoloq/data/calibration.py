"""Calibration images: drawn (seeded) from train splits, never overlapping the evaluation images."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from yoloq.config import CalibrationConfig
from yoloq.data.datasets import load_split
from yoloq.data.types import DatasetSplit
from yoloq.errors import DataError


def content_hash(path: Path) -> str:
    """SHA-1 of a file's bytes: identifies an image whatever its path or name."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class CalibrationSet:
    """The images a quantizer calibrates on, and how they were chosen."""

    images: tuple[Path, ...]
    sources: tuple[str, ...]
    seed: int
    requested: int
    sha256: str

    def describe(self) -> dict[str, Any]:
        """The record's description: sources, count, seed and list hash."""
        return {"sources": list(self.sources), "images": len(self.images), "requested": self.requested,
                "seed": self.seed, "sha256": self.sha256}

    def batches(self, imgsz: int, limit: int | None = None, progress: str | None = None) -> Iterator[np.ndarray]:
        """Yield each image as a model input batch ``[1, 3, imgsz, imgsz]`` (float32, RGB, [0, 1]).

        Unreadable images are skipped. ``progress`` labels a progress bar.
        """
        from yoloq.preprocess import prepare, read_image
        from yoloq.progress import bar

        paths = self.images[:limit] if limit else self.images
        for p in bar(paths, desc=progress, disable=progress is None):
            try:
                img = read_image(p)
            except DataError:
                continue
            yield prepare([img], imgsz)[0]


def build_calibration(cfg: CalibrationConfig, evaluation: DatasetSplit, base_dir: Path | None = None
                      ) -> CalibrationSet:
    """Pool the configured sources, drop duplicates, refuse overlap with ``evaluation``, sample seeded.

    Raises:
        DataError: When a source cannot be read, or shares images with the evaluation split.
    """
    eval_hashes = {content_hash(s.path): s.path.name for s in evaluation.samples}
    pool: dict[str, Path] = {}
    sources = []
    for ref in cfg.sources:
        split = load_split(ref, base_dir)
        sources.append(f"{split.name}/{split.split}")
        for s in split.samples:
            h = content_hash(s.path)
            if h in eval_hashes:
                raise DataError(
                    f"calibration source '{split.name}/{split.split}' overlaps the evaluation images "
                    f"({s.path.name} is also {eval_hashes[h]} in '{evaluation.name}/{evaluation.split}'); "
                    f"calibrate on a train split")
            pool.setdefault(h, s.path)
    keys = sorted(pool)
    chosen = random.Random(cfg.seed).sample(keys, min(cfg.images, len(keys)))
    digest = hashlib.sha256("\n".join(chosen).encode()).hexdigest()
    return CalibrationSet(images=tuple(pool[k] for k in chosen), sources=tuple(sources), seed=cfg.seed,
                          requested=cfg.images, sha256=digest)
