"""The one postprocessing every backend shares: decode + class-offset NMS + un-letterbox."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yoloq.config import EvalConfig
from yoloq.preprocess import Letterbox


@dataclass(frozen=True)
class Detections:
    """One image's detections in original pixels: ``boxes`` xyxy ``[n, 4]``, ``scores`` ``[n]``, ``classes`` ``[n]``."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def unletterbox(xyxy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Map xyxy boxes from input pixels back to the original image, clipped to it."""
    out = (xyxy - np.array([lb.left, lb.top, lb.left, lb.top], dtype=np.float32)) / lb.scale
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, lb.width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, lb.height)
    return out


def postprocess(raw: np.ndarray, boxes: list[Letterbox], cfg: EvalConfig, end2end: bool = False) -> list[Detections]:
    """Turn a raw head output into per-image detections.

    Uses Ultralytics' ``non_max_suppression`` (torchvision NMS with a per-class offset), the same call
    ``yolo val`` makes, so thresholds mean what users expect.

    Args:
        raw: ``[B, 4 + nc, N]`` (xywh in input pixels, scores) or ``[B, K, 6]`` for end-to-end heads.
        boxes: The letterbox of each image in the batch.
        cfg: conf / iou / max_det / multi_label.
        end2end: Whether ``raw`` comes from an NMS-free head.
    """
    import torch
    from ultralytics.utils.nms import non_max_suppression

    pred = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
    out = non_max_suppression(pred, conf_thres=cfg.conf, iou_thres=cfg.iou, multi_label=cfg.multi_label,
                              max_det=cfg.max_det, end2end=end2end, max_time_img=60.0)
    dets = []
    for det, lb in zip(out, boxes):
        d = det.numpy()
        dets.append(Detections(boxes=unletterbox(d[:, :4].copy(), lb), scores=d[:, 4].copy(),
                               classes=d[:, 5].astype(np.int64)))
    return dets
