"""Read an Ultralytics YOLO-layout split and convert its labels to a COCO ground truth."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from yoloq.data.types import DatasetSplit, Sample
from yoloq.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@lru_cache(maxsize=1)
def coco80() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """COCO's 80 class names (Ultralytics order) and their official category ids (1..90)."""
    from ultralytics.data.converter import coco80_to_coco91_class
    from ultralytics.utils import ROOT, YAML

    names = YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"]
    return tuple(names[i] for i in sorted(names)), tuple(coco80_to_coco91_class())


def _size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any unreadable header means the image is skipped
        return None


def read_yolo(name: str, split: str, images: Path, labels: Path, names: tuple[str, ...]) -> DatasetSplit:
    """Read a YOLO-layout split: one ``.txt`` per image with ``class cx cy w h`` normalised rows.

    Class ids 0..79 map to COCO's category ids when ``names`` are COCO's; otherwise id = class index.

    Raises:
        DataError: When the image folder is missing or holds no images.
    """
    if not images.is_dir():
        raise DataError(f"dataset '{name}' split '{split}': image folder not found: {images}")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"dataset '{name}' split '{split}': no images in {images}")
    coco_names, coco_ids = coco80()
    cat_ids = coco_ids if tuple(names) == coco_names else tuple(range(len(names)))
    stems = [f.stem for f in files]
    numeric = all(s.isdigit() for s in stems) and len(set(int(s) for s in stems)) == len(stems)
    samples, anns, gimgs, unreadable = [], [], [], []
    for i, f in enumerate(files):
        size = _size(f)
        if size is None:
            unreadable.append(f.name)
            continue
        w, h = size
        iid = int(f.stem) if numeric else i
        samples.append(Sample(iid, f, w, h))
        gimgs.append({"id": iid, "file_name": f.name, "width": w, "height": h})
        lf = labels / f"{f.stem}.txt"
        rows = lf.read_text().split("\n") if lf.is_file() else []
        for row in rows:
            parts = row.split()
            if len(parts) < 5:
                continue
            c, cx, cy, bw, bh = int(float(parts[0])), *map(float, parts[1:5])
            if not 0 <= c < len(names):
                raise DataError(f"dataset '{name}': label {lf.name} has class {c}, outside 0..{len(names) - 1}")
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": cat_ids[c], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    gt = {"images": gimgs, "annotations": anns,
          "categories": [{"id": cid, "name": n} for cid, n in zip(cat_ids, names)]}
    return DatasetSplit(name=name, split=split, root=images, samples=tuple(samples), names=tuple(names),
                        category_ids=tuple(cat_ids), gt=gt, unreadable=tuple(unreadable))
