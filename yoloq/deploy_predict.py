"""Run the bundled detector on images: the runtime, numpy and OpenCV only (no yoloq, no PyTorch).

    python predict.py IMAGE [IMAGE ...] [--conf 0.25] [--json detections.json] [--draw OUT_DIR]

Preprocessing and postprocessing are yoloq's, as its evaluation ran them (``meta.json`` says each rule): the
letterbox (long side to the input size, bilinear, centred, pad 114), RGB in [0, 1], NCHW; then class-offset NMS
on the best class of each box (Ultralytics' ``non_max_suppression`` with ``multi_label=False``), or an NMS-free
head's top-k taken as it is; boxes mapped back to the image and clipped. yoloq's tests run this file against
yoloq's own detections on evaluation images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
MAX_WH = 7680  # Ultralytics' class offset for batched NMS


def load_model(path: Path, threads: int):  # noqa: ANN201 - replaced by the runtime's loader in each bundle
    """The runtime's model as a function: NCHW float32 batch -> raw head output (boxes in input pixels)."""
    raise NotImplementedError("yoloq writes each bundle's loader here")


def letterbox(img: np.ndarray, size: int, pad: int) -> tuple[np.ndarray, tuple[float, int, int]]:
    """Long side to ``size`` (bilinear), centred on a ``size`` square padded with ``pad``; (scale, left, top)."""
    h, w = img.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dw, dh = (size - nw) / 2, (size - nh) / 2
    top, bottom, left, right = round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1)
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad,) * 3)
    return img, (scale, left, top)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS (torchvision's rule: drop a box whose IoU with a kept, higher-scoring one exceeds ``iou``)."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        order = rest[inter / (area[i] + area[rest] - inter) <= iou]
    return np.asarray(keep, dtype=np.int64)


def decode(raw: np.ndarray, meta: dict, conf: float) -> np.ndarray:
    """Rows ``[x1, y1, x2, y2, score, class]`` in input pixels, best first."""
    if meta["head"] == "end2end":  # [1, K, 6]: the model's own top-k
        det = raw[0]
        return det[det[:, 4] > conf][: meta["thresholds"]["max_det"]]
    pred = raw[0].T  # [N, 4 + nc]
    pred = pred[pred[:, 4:].max(1) > conf]
    xy, wh = pred[:, :2], pred[:, 2:4]
    box = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    cls = pred[:, 4:].argmax(1)
    score = pred[np.arange(len(pred)), 4 + cls]
    keep = score > conf
    box, score, cls = box[keep], score[keep], cls[keep]
    i = nms(box + cls[:, None] * MAX_WH, score, meta["thresholds"]["iou"])[: meta["thresholds"]["max_det"]]
    return np.concatenate([box[i], score[i, None], cls[i, None].astype(np.float32)], 1)


def detect(model, img: np.ndarray, meta: dict, conf: float) -> list[dict]:  # noqa: ANN001 - the loaded model
    """Detections on one BGR image: boxes in its own pixels."""
    size = meta["input"]["size"]
    boxed, (scale, left, top) = letterbox(img, size, meta["letterbox"]["pad"])
    x = np.ascontiguousarray(boxed[None, ..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    det = decode(model(x), meta, conf)
    h, w = img.shape[:2]
    xyxy = (det[:, :4] - np.array([left, top, left, top], np.float32)) / scale
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h)
    return [{"box": [float(v) for v in b], "score": float(d[4]), "class": int(d[5]), "name": meta["names"][int(d[5])]}
            for b, d in zip(xyxy, det)]


def draw(img: np.ndarray, dets: list[dict]) -> np.ndarray:
    """The detections drawn on a copy of the image."""
    out = img.copy()
    for d in dets:
        x1, y1, x2, y2 = (int(round(v)) for v in d["box"])
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 200, 0), 2)
        cv2.putText(out, f"{d['name']} {d['score']:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 200, 0), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    meta = json.loads((HERE / "meta.json").read_text())
    ap = argparse.ArgumentParser(description=f"{meta['variant']}: detect objects in images")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--conf", type=float, default=meta["thresholds"]["conf"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write every image's detections here")
    ap.add_argument("--draw", help="write each image with its boxes into this folder")
    args = ap.parse_args(argv)
    model = load_model(HERE / meta["model_file"], args.threads)
    results = {}
    for f in args.images:
        img = cv2.imread(f, cv2.IMREAD_COLOR)
        if img is None:
            print(f"predict: cannot read {f}", file=sys.stderr)
            continue
        results[f] = detect(model, img, meta, args.conf)
        print(f"{f}: {len(results[f])} detections: " + ", ".join(f"{d['name']} {d['score']:.2f}"
                                                                    for d in results[f][:5]))
        if args.draw:
            Path(args.draw).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(Path(args.draw) / Path(f).name), draw(img, results[f]))
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
