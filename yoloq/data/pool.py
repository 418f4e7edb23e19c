"""One pool of train images serving calibration, held-out validation and QAT.

The pool is every image of the configured train sources, deduplicated by content hash, refusing
any image that is also an evaluation image, and put in one seeded order. Calibration takes images
from the front of that order (a variant using fewer takes a prefix of them), held-out validation
takes them from the back, so the two never share an image; QAT trains on the front as well.
"""

from __future__ import annotations

import hashlib
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from yoloq.config import CalibrationConfig
from yoloq.data.datasets import load_split
from yoloq.data.types import DatasetSplit, Sample
from yoloq.errors import DataError


def content_hash(path: Path) -> str:
    """SHA-1 of a file's bytes: identifies an image whatever its path or name."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class PoolImage:
    """One pool image: its content hash, the split it came from and its sample there."""

    hash: str
    split: DatasetSplit
    sample: Sample


@dataclass(frozen=True)
class ImagePool:
    """The train images of the calibration sources, deduplicated and in one seeded order."""

    images: tuple[PoolImage, ...]
    sources: tuple[str, ...]
    seed: int

    @classmethod
    def build(cls, cfg: CalibrationConfig, evaluation: DatasetSplit | None, base_dir: Path | None = None,
              role: str = "evaluation") -> ImagePool:
        """Pool the configured sources, drop duplicates, refuse overlap with ``evaluation`` (the split the run
        scores: its ``role`` names it in the error), order by seed.

        Raises:
            DataError: When a source cannot be read, or shares images with the evaluation split.
        """
        eval_hashes = {content_hash(s.path): s.path.name for s in evaluation.samples} if evaluation else {}
        pool: dict[str, PoolImage] = {}
        sources = []
        for ref in cfg.sources:
            split = load_split(ref, base_dir)
            sources.append(f"{split.name}/{split.split}")
            for s in split.samples:
                h = content_hash(s.path)
                if h in eval_hashes:
                    raise DataError(
                        f"calibration source '{split.name}/{split.split}' overlaps the {role} images "
                        f"({s.path.name} is also {eval_hashes[h]} in '{evaluation.name}/{evaluation.split}'); "
                        f"calibrate on a train split")
                pool.setdefault(h, PoolImage(h, split, s))
        keys = sorted(pool)
        # random.sample over the whole pool: its first k equal random.sample(keys, k), the draw earlier
        # versions made, so calibration lists (and their hashes) are unchanged
        order = random.Random(cfg.seed).sample(keys, len(keys))
        return cls(tuple(pool[k] for k in order), tuple(sources), cfg.seed)

    def __len__(self) -> int:
        return len(self.images)

    def front(self, n: int, what: str = "calibration") -> tuple[PoolImage, ...]:
        """The first ``n`` images (all of them, with a warning naming both numbers, when fewer exist)."""
        if n > len(self.images):
            print(f"yoloq: warning: {what} asks for {n} images but its sources hold {len(self.images)}; "
                  f"using {len(self.images)}", file=sys.stderr)
        return self.images[:n]

    def back(self, n: int, after: int) -> tuple[PoolImage, ...]:
        """Up to ``n`` images from the end of the order, none among the first ``after``.

        Raises:
            DataError: When no image is left after the first ``after``.
        """
        spare = len(self.images) - after
        if spare <= 0:
            raise DataError(f"no held-out train images: all {len(self.images)} pool images are calibration "
                            f"images; set the variant's calibration_images below {len(self.images)}")
        return self.images[len(self.images) - min(n, spare):]

    def labelled(self, picked: Sequence[PoolImage], names: tuple[str, ...], name: str = "holdout") -> DatasetSplit:
        """``picked`` as one labelled split, ground truth merged across sources with category id = class index."""
        index = {nm: i for i, nm in enumerate(names)}
        images, anns, samples = [], [], []
        for new_id, p in enumerate(picked, 1):
            split, s = p.split, p.sample
            cats = dict(zip(split.category_ids, split.names))
            samples.append(Sample(new_id, s.path, s.width, s.height))
            images.append({"id": new_id, "file_name": s.path.name, "width": s.width, "height": s.height})
            for a in split.annotations_of(s.image_id):
                if cats.get(a["category_id"]) in index:
                    anns.append({**a, "id": len(anns) + 1, "image_id": new_id,
                                 "category_id": index[cats[a["category_id"]]]})
        gt: dict[str, Any] = {"images": images, "annotations": anns,
                              "categories": [{"id": i, "name": nm} for i, nm in enumerate(names)]}
        root = samples[0].path.parent if samples else Path(".")
        return DatasetSplit(name=name, split="train", root=root, samples=tuple(samples), names=tuple(names),
                            category_ids=tuple(range(len(names))), gt=gt)
