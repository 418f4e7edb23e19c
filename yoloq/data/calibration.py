"""Calibration images: the front of the seeded train-image pool, never evaluation images."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from yoloq.config import CalibrationConfig
from yoloq.data.pool import ImagePool, content_hash
from yoloq.data.types import DatasetSplit
from yoloq.errors import DataError

__all__ = ["CalibrationSet", "build_calibration", "calibration_from_pool", "content_hash", "list_hash"]


@dataclass(frozen=True)
class CalibrationSet:
    """The images a quantizer calibrates on, and how they were chosen."""

    images: tuple[Path, ...]
    sources: tuple[str, ...]
    seed: int
    requested: int
    sha256: str
    pool: int = 0
    hashes: tuple[str, ...] = ()  # the images' content hashes (what ``sha256`` is computed from)

    def describe(self) -> dict[str, Any]:
        """The record's description: sources, count (used, requested, pool), seed and list hash."""
        return {"sources": list(self.sources), "images": len(self.images), "requested": self.requested,
                "pool": self.pool, "seed": self.seed, "sha256": self.sha256}

    def take(self, n: int | None) -> CalibrationSet:
        """The first ``n`` images (a variant's ``calibration_images``); itself when ``n`` is None or too large."""
        if n is None or n >= len(self.images):
            return self
        return self.take_range(0, n)

    def take_range(self, start: int, end: int) -> CalibrationSet:
        """Images ``start:end`` as their own set (its hash is that sub-list's, computed as the whole set's)."""
        images, hashes = self.images[start:end], self.hashes[start:end]
        return replace(self, images=images, requested=len(images), hashes=hashes, sha256=list_hash(hashes))

    def batches(self, imgsz: int, limit: int | None = None, progress: str | None = None) -> Iterator[np.ndarray]:
        """Yield each image as a model input batch ``[1, 3, imgsz, imgsz]`` (float32, RGB, [0, 1]).

        Unreadable images are skipped. ``progress`` labels a progress display.
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


def list_hash(hashes: tuple[str, ...]) -> str:
    """The SHA-256 of a calibration list: its images' content hashes, in order."""
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def calibration_from_pool(pool: ImagePool, n: int) -> CalibrationSet:
    """The first ``n`` pool images as the run's calibration set (a warning when the pool holds fewer)."""
    chosen = pool.front(n)
    hashes = tuple(p.hash for p in chosen)
    return CalibrationSet(images=tuple(p.sample.path for p in chosen), sources=pool.sources, seed=pool.seed,
                          requested=n, sha256=list_hash(hashes), pool=len(pool), hashes=hashes)


def build_calibration(cfg: CalibrationConfig, evaluation: DatasetSplit, base_dir: Path | None = None
                      ) -> CalibrationSet:
    """Pool the configured sources (refusing overlap with ``evaluation``) and take ``cfg.images`` of them.

    Raises:
        DataError: When a source cannot be read, or shares images with the evaluation split.
    """
    return calibration_from_pool(ImagePool.build(cfg, evaluation, base_dir), cfg.images)
