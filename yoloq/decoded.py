"""Evaluation images decoded and letterboxed once, then read back by every variant, candidate and later run.

JPEG decoding and the letterbox cost about 3-4 ms an image on two cores, a sixth of an INT8 inference, and
a run scores the same images once per variant (ten in the default config, sixteen candidates in a tune).
The first pass over a split at one input size writes each letterboxed uint8 image into a memory-mapped
array under ``$YOLOQ_CACHE/decoded/`` as it goes; once complete, later passes read rows from it (the page
cache keeps them in memory), already in the model's RGB CHW layout, so a cached image costs one division.
The key covers every image file (path, size, modification time), the input size and the letterbox rule,
so a changed image or size is decoded afresh. A split whose array would pass
``YOLOQ_DECODED_MAX_GB`` (default 8) or half the free disk is decoded each time, as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from yoloq.data.types import DatasetSplit
from yoloq.errors import ConfigError, DataError
from yoloq.paths import cache_root
from yoloq.preprocess import PAD_VALUE, Letterbox, letterbox, read_image, to_input

VERSION = 1  # bump when the letterbox rule changes


def cache_key(split: DatasetSplit, imgsz: int) -> str:
    """What the decoded array depends on: every image file as it is now, the size and the letterbox rule."""
    files = []
    for s in split.samples:
        try:
            st = s.path.stat()
            files.append([str(s.path), st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([str(s.path), -1, -1])
    text = json.dumps([VERSION, imgsz, PAD_VALUE, files])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def max_bytes() -> float:
    """The largest decoded array kept: ``$YOLOQ_DECODED_MAX_GB`` gigabytes (default 8).

    Raises:
        ConfigError: When the variable is set to something that is not a number of gigabytes.
    """
    text = os.environ.get("YOLOQ_DECODED_MAX_GB", "8")
    try:
        gb = float(text)
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise ConfigError(f"YOLOQ_DECODED_MAX_GB={text!r}: give a number of gigabytes (0 keeps no decoded "
                          "images), or unset it for 8")
    return gb * 1e9


def _fits(n: int, imgsz: int, folder: Path) -> bool:
    need = n * imgsz * imgsz * 3
    limit = max_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    return need <= limit and need <= shutil.disk_usage(folder).free / 2


def decoded_items(split: DatasetSplit, imgsz: int, skipped: list[str],
                  folder: Path | None = None) -> Iterator[tuple[Any, list[Letterbox], int]]:
    """``split``'s images as model inputs ``(input, letterboxes, image_id)``, in order, decoded at most once.

    Unreadable images are skipped with a warning and their names appended to ``skipped``.
    """
    from yoloq.progress import say

    skipped.extend(split.unreadable)
    folder = folder or cache_root() / "decoded"
    key = cache_key(split, imgsz)
    array, meta = folder / f"{key}.npy", folder / f"{key}.json"
    if array.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        rows = np.load(array, mmap_mode="r")
        for s, lb in zip(split.samples, info["letterboxes"]):
            if lb is None:
                say(f"  warning: skipping unreadable image {s.path.name}")
                skipped.append(s.path.name)
                continue
            x = np.divide(rows[lb["row"]][None], np.float32(255.0), dtype=np.float32)  # == to_input, bit for bit
            yield x, [Letterbox(**{k: v for k, v in lb.items() if k != "row"})], s.image_id
        return
    n = len(split.samples)
    store = _fits(n, imgsz, folder) if n else False
    partial = folder / f"{key}.{os.getpid()}.partial.npy"
    rows = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(n, 3, imgsz, imgsz)) if store else None
    boxes: list[dict[str, Any] | None] = []
    try:
        for i, s in enumerate(split.samples):
            try:
                img = read_image(s.path)
            except DataError:
                say(f"  warning: skipping unreadable image {s.path.name}")
                skipped.append(s.path.name)
                boxes.append(None)
                continue
            x, lb = letterbox(img, imgsz)
            if rows is not None:
                rows[i] = x[..., ::-1].transpose(2, 0, 1)  # RGB CHW, as the model takes it
            boxes.append({"row": i, "scale": lb.scale, "left": lb.left, "top": lb.top, "width": lb.width,
                          "height": lb.height})
            yield to_input([x]), [lb], s.image_id
        if rows is not None:
            rows.flush()
            del rows
            rows = None
            tmp = meta.with_name(f"{meta.name}.{os.getpid()}.partial")
            tmp.write_text(json.dumps({"letterboxes": boxes, "imgsz": imgsz, "images": n}))
            partial.replace(array)  # the array first: a meta file always has its array
            tmp.replace(meta)
    finally:
        if rows is not None:  # stopped before the end: nothing half-written stays
            del rows
        partial.unlink(missing_ok=True)
