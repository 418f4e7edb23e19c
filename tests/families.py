"""Random-init detectors of every YOLO family, built from Ultralytics' own model YAMLs (no download),
and the checks the family tests and the family benchmark share.

An untrained model scores every anchor alike (its activations fade to ~1e-7 by the head, under
batch-norm statistics that were never measured, and Ultralytics' bias init gives ~1e-4 scores), so its
detections are pure ties that no two runtimes break the same way. After the build, a data-dependent
init on four real images fixes that: the batch-norm statistics are measured once (one forward in
train mode), then each head branch's output convolution is rescaled to logits of standard deviation
1 (class scores) or 0.5 (box distances), biases zeroed. Still random weights, but scores spread over
(0, 1) and boxes of many sizes, so detections can be compared across runtimes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

# family -> the Ultralytics YAML of its smallest detector (YOLOv5u's "n" scale is yolov5.yaml's n)
FAMILIES = {
    "yolov5nu": "yolov5n.yaml",
    "yolov8n": "yolov8n.yaml",
    "yolov9t": "yolov9t.yaml",
    "yolov10n": "yolov10n.yaml",
    "yolo11n": "yolo11n.yaml",
    "yolo12n": "yolo12n.yaml",
    "yolo26n": "yolo26n.yaml",
}
END2END = ("yolov10n", "yolo26n")  # heads with an NMS-free one-to-one branch
ALL_VARIANTS = [{"format": f, "precision": p} for f in ("onnxruntime", "openvino", "litert")
                for p in ("fp32", "fp16", "int8")]


def build(family: str, dest: Path, names: dict[int, str]) -> Path:
    """Save a random-init checkpoint of ``family`` with COCO class names at ``dest/<family>.pt``."""
    import torch
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    LOGGER.setLevel(logging.WARNING)
    torch.manual_seed(0)
    yolo = YOLO(FAMILIES[family])
    yolo.model.names = dict(names)
    _spread(yolo.model)
    path = dest / f"{family}.pt"
    yolo.save(str(path))
    return path


def _spread(model: Any) -> None:
    """Measure the batch-norm statistics on real images, then rescale the head's output convolutions."""
    import torch

    from yoloq.paths import shared_root
    from yoloq.preprocess import prepare, read_image

    images = sorted((shared_root() / "datasets" / "coco-mini" / "val2017").glob("*.jpg"))[:4]
    x = torch.from_numpy(prepare([read_image(p) for p in images], 320)[0])
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momentum = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one batch sets the statistics
    head = model.model[-1]
    convs = [(seq[-1], 1.0 if "cv3" in branch else 0.5) for branch in ("cv2", "cv3", "one2one_cv2", "one2one_cv3")
             for seq in (getattr(head, branch, None) or [])]
    seen: dict[int, torch.Tensor] = {}
    hooks = [c.register_forward_hook(lambda m, i, o: seen.__setitem__(id(m), o.detach())) for c, _ in convs]
    with torch.no_grad():
        model.train()
        model(x)
        model.eval()
        for c, _ in convs:
            c.bias.data.zero_()
        model(x)
        for c, target in convs:
            c.weight.data *= target / float(seen[id(c)].std())
    for h in hooks:
        h.remove()
    for m, mom in zip(bns, momentum):
        m.momentum = mom


def export_onnx(pt: Path, imgsz: int, end2end: bool) -> Path:
    """Ultralytics' own ONNX export of ``pt`` (NMS-free branch when ``end2end``), beside it."""
    import shutil

    from ultralytics import YOLO

    out = Path(YOLO(str(pt)).export(format="onnx", imgsz=imgsz, simplify=True, batch=1,
                                    **({"nms": False} if end2end else {})))
    dest = pt.with_name(f"{pt.stem}{'-e2e' if end2end else ''}.onnx")
    shutil.move(str(out), dest)
    return dest


def config(model: Path, out: Path, variants: list[dict[str, Any]], nms: bool | None = None,
           imgsz: int = 320, calibration: int = 4) -> dict[str, Any]:
    """A smoke-sized run of ``model``: 4 evaluation and ``calibration`` calibration images, short latency."""
    return {"model": str(model), "imgsz": imgsz,
            "data": {"dataset": "coco-mini", "split": "val2017", "max_images": 4},
            "calibration": {"sources": [{"dataset": "coco-mini", "split": "train2017"}], "images": calibration,
                            "seed": 0},
            "variants": variants,
            "eval": {"conf": 0.25, "iou": 0.7, "max_det": 300, "multi_label": False, "nms": nms},
            "latency": {"warmup": 1, "min_runs": 3, "min_seconds": 0, "threads": 2, "images": 2},
            "report": {"bootstrap": 0}, "output": str(out)}


def matched(ref: Any, other: Any, top: int = 30, px: float = 1.0, score_tol: float = 0.02) -> float:
    """Share of ``ref``'s ``top`` best detections that ``other`` has too: same class, every box corner
    within ``px`` pixels (random boxes can be inverted, so no IoU), score within ``score_tol``."""
    order = np.argsort(-ref.scores)[:top]
    if not len(order):
        return 1.0 if not len(other) else 0.0
    if not len(other):
        return 0.0
    near = np.abs(ref.boxes[order][:, None, :] - other.boxes[None]).max(axis=2) <= px
    same = (ref.classes[order][:, None] == other.classes[None]) & \
        (np.abs(ref.scores[order][:, None] - other.scores[None]) <= score_tol)
    return float((near & same).any(axis=1).mean())
