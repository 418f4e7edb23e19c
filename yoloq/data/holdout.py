"""A held-out labelled set from the train splits: images not used for calibration, never evaluation images."""

from __future__ import annotations

import random
from pathlib import Path

from yoloq.config import CalibrationConfig
from yoloq.data.calibration import content_hash
from yoloq.data.datasets import load_split
from yoloq.data.types import DatasetSplit, Sample
from yoloq.errors import DataError


def holdout_split(cfg: CalibrationConfig, used: tuple[Path, ...], model_names: tuple[str, ...], n: int,
                  base_dir: Path | None = None) -> DatasetSplit:
    """Up to ``n`` labelled images of the calibration sources that calibration did not use (seeded).

    The ground truth is merged across sources with category id = model class index.

    Raises:
        DataError: When no image is left over (calibrate on fewer images: ``calibration_images``).
    """
    used_hashes = {content_hash(p) for p in used}
    index = {name: i for i, name in enumerate(model_names)}
    pool: dict[str, tuple[DatasetSplit, Sample]] = {}
    for ref in cfg.sources:
        split = load_split(ref, base_dir)
        for s in split.samples:
            h = content_hash(s.path)
            if h not in used_hashes:
                pool.setdefault(h, (split, s))
    if not pool:
        raise DataError("no held-out train images: every calibration image is used for calibration; set the "
                        "variant's calibration_images below the calibration set's size")
    keys = sorted(pool)
    chosen = random.Random(cfg.seed + 1).sample(keys, min(n, len(keys)))
    images, anns, samples = [], [], []
    for new_id, h in enumerate(chosen, 1):
        split, s = pool[h]
        names = {c: nm for c, nm in zip(split.category_ids, split.names)}
        samples.append(Sample(new_id, s.path, s.width, s.height))
        images.append({"id": new_id, "file_name": s.path.name, "width": s.width, "height": s.height})
        for a in split.gt["annotations"]:
            if a["image_id"] == s.image_id and names.get(a["category_id"]) in index:
                anns.append({**a, "id": len(anns) + 1, "image_id": new_id,
                             "category_id": index[names[a["category_id"]]]})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": i, "name": nm} for i, nm in enumerate(model_names)]}
    return DatasetSplit(name="holdout", split="train", root=samples[0].path.parent, samples=tuple(samples),
                        names=tuple(model_names), category_ids=tuple(range(len(model_names))), gt=gt)
