"""Dataset files (``datasets/*.yaml``): find one by name, resolve its paths, read a split."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from yoloq.config import DataRef
from yoloq.data.coco import read_coco
from yoloq.data.types import DatasetSplit
from yoloq.data.yolo import read_yolo
from yoloq.errors import DataError
from yoloq.paths import REPO_ROOT, shared_root


def find_dataset_file(ref: str, base_dir: Path | None = None) -> Path:
    """Find a dataset YAML by path or by name in ``datasets/`` (beside the config, cwd or checkout).

    Raises:
        DataError: When no such file exists (lists the names that do).
    """
    p = Path(ref).expanduser()
    folders = [d for d in ((base_dir / ".." / "datasets") if base_dir else None, Path.cwd() / "datasets",
                           REPO_ROOT / "datasets") if d is not None]
    cands = [p, *(d / p for d in folders), *(d / f"{ref}.yaml" for d in folders)]
    for c in cands:
        if c.is_file():
            return c.resolve()
    known = sorted({f.stem for d in folders if d.is_dir() for f in d.glob("*.yaml")})
    raise DataError(f"dataset '{ref}' not found; give a dataset YAML path or one of: {', '.join(known) or 'none'}")


def _root(spec: dict[str, Any], file: Path) -> Path:
    raw = spec.get("path")
    if not raw:
        raise DataError(f"dataset file {file.name} has no 'path' (the dataset folder)")
    p = Path(str(raw)).expanduser()
    return p if p.is_absolute() else shared_root() / p


def only_classes(split: DatasetSplit, keep: list[str], file: Path) -> DatasetSplit:
    """``split`` with only the classes named in ``keep`` (a dataset file's ``classes:``): their labels, their
    categories; every image stays (an image without such an object still counts its false positives).

    Raises:
        DataError: When a named class is not one of the dataset's.
    """
    missing = [c for c in keep if c not in split.names]
    if missing:
        raise DataError(f"dataset file {file.name}: classes {missing} are not among its names "
                        f"({', '.join(split.names[:5])}, ...)")
    idx = [split.names.index(c) for c in keep]
    cats = {split.category_ids[i] for i in idx}
    gt = dict(split.gt) | {"annotations": [a for a in split.gt["annotations"] if a["category_id"] in cats],
                           "categories": [c for c in split.gt["categories"] if c["id"] in cats]}
    return DatasetSplit(split.name, split.split, split.root, split.samples, tuple(keep),
                        tuple(split.category_ids[i] for i in idx), gt, split.unreadable)


def load_split(ref: DataRef, base_dir: Path | None = None) -> DatasetSplit:
    """Read the split ``ref`` names.

    Relative dataset paths resolve against the shared folder (``$YOLOQ_SHARED``, default ``../shared``).

    Raises:
        DataError: When the file, folder, split or annotations are missing or malformed.
    """
    file = find_dataset_file(ref.dataset, base_dir)
    try:
        spec = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"dataset file {file.name} is not valid YAML: {e}") from None
    name = spec.get("name", file.stem)
    root = _root(spec, file)
    if not root.is_dir():
        raise DataError(f"dataset '{name}' folder not found: {root} (set YOLOQ_SHARED or edit 'path' in {file.name})")
    splits = spec.get("splits") or {}
    if ref.split not in splits:
        raise DataError(f"dataset '{name}' has no split '{ref.split}'; splits: {', '.join(splits) or 'none'}")
    s = splits[ref.split]
    fmt = spec.get("format")
    if fmt == "coco":
        out = read_coco(name, ref.split, root / s["images"], root / s["annotations"])
    elif fmt == "yolo":
        names = spec.get("names")
        if names is None and spec.get("data_yaml"):
            names = (yaml.safe_load((root / spec["data_yaml"]).read_text()) or {}).get("names")
        if not names:
            raise DataError(f"dataset '{name}' ({file.name}) gives no class names ('names' or 'data_yaml')")
        names = tuple(names[k] for k in sorted(names)) if isinstance(names, dict) else tuple(names)
        labels = root / s.get("labels", str(Path(s["images"].replace("images", "labels", 1))))
        out = read_yolo(name, ref.split, root / s["images"], labels, names)
    else:
        raise DataError(f"dataset file {file.name}: format must be 'coco' or 'yolo', got {fmt!r}")
    if spec.get("classes"):
        out = only_classes(out, [str(c) for c in spec["classes"]], file)
    if ref.max_images is not None and ref.max_images < len(out.samples):
        keep = out.samples[: ref.max_images]
        out = DatasetSplit(out.name, out.split, out.root, keep, out.names, out.category_ids, out.gt, out.unreadable)
    return dataclasses.replace(out, file=file)
