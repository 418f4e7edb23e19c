"""The one preprocessing every backend shares: read, letterbox (square, centred, pad 114, bilinear), normalise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from yoloq.errors import DataError

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How an image was mapped into the square input: ``input = original * scale + (left, top)``."""

    scale: float
    left: int
    top: int
    width: int
    height: int


def read_image(path: Path) -> np.ndarray:
    """Read an image as BGR uint8.

    Raises:
        DataError: When the file is missing, truncated or not an image.
    """
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if img is None:
        raise DataError(f"image cannot be read (missing, truncated or not an image): {Path(path).name}")
    return img


def letterbox(img: np.ndarray, imgsz: int) -> tuple[np.ndarray, Letterbox]:
    """Resize the long side to ``imgsz`` (bilinear) and pad to a centred ``imgsz`` square with 114.

    Args:
        img: HWC uint8 image.
        imgsz: The square input size.

    Returns:
        The padded HWC uint8 image and the mapping back to the original pixels.
    """
    h, w = img.shape[:2]
    scale = imgsz / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dw, dh = (imgsz - nw) / 2, (imgsz - nh) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    out = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return out, Letterbox(scale=scale, left=left, top=top, width=w, height=h)


def to_input(images: list[np.ndarray]) -> np.ndarray:
    """Stack letterboxed BGR uint8 images into an RGB NCHW float32 batch in [0, 1]."""
    batch = np.stack(images)[..., ::-1].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32) / 255.0


def prepare(images: list[np.ndarray], imgsz: int) -> tuple[np.ndarray, list[Letterbox]]:
    """Letterbox and normalise a list of BGR images into one model input batch."""
    boxed = [letterbox(im, imgsz) for im in images]
    return to_input([b[0] for b in boxed]), [b[1] for b in boxed]
