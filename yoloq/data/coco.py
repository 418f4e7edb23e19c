"""Read a COCO json split (images folder + instances json)."""

from __future__ import annotations

import json
from pathlib import Path

from yoloq.data.types import DatasetSplit, Sample
from yoloq.errors import DataError


def read_coco(name: str, split: str, images: Path, annotations: Path) -> DatasetSplit:
    """Read a COCO-format split.

    Args:
        name: The dataset's name (for messages and records).
        split: The split's name.
        images: The folder holding the split's images.
        annotations: The COCO instances json.

    Raises:
        DataError: When the folder or json is missing or malformed.
    """
    if not annotations.is_file():
        raise DataError(f"dataset '{name}' split '{split}': annotation file not found: {annotations}")
    if not images.is_dir():
        raise DataError(f"dataset '{name}' split '{split}': image folder not found: {images}")
    try:
        gt = json.loads(annotations.read_text())
        cats = sorted(gt["categories"], key=lambda c: c["id"])
        imgs = gt["images"]
        gt.setdefault("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"dataset '{name}': {annotations.name} is not a COCO instances file ({e})") from None
    samples = tuple(
        Sample(int(im["id"]), images / im["file_name"], int(im["width"]), int(im["height"]))
        for im in sorted(imgs, key=lambda im: im["file_name"])
    )
    if not samples:
        raise DataError(f"dataset '{name}' split '{split}' has no images in {annotations.name}")
    missing = [s.path.name for s in samples if not s.path.is_file()]
    if len(missing) == len(samples):
        raise DataError(f"dataset '{name}' split '{split}': none of the {len(samples)} images listed in "
                        f"{annotations.name} are in {images}")
    return DatasetSplit(
        name=name,
        split=split,
        root=images,
        samples=tuple(s for s in samples if s.path.is_file()),
        names=tuple(c["name"] for c in cats),
        category_ids=tuple(int(c["id"]) for c in cats),
        gt=gt,
        unreadable=tuple(missing),
    )
