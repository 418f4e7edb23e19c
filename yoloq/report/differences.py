"""Where an INT8 variant's detections differ most from the reference's, as pictures, from the kept detections alone.

For each INT8 variant, every evaluation image's confident boxes (score >= the deployment threshold, 0.25) are matched
to the reference's greedily, same class, IoU >= 0.5, best score first: a reference box left unmatched is *lost*, a
variant box left unmatched is *added*. The images with the most lost plus added boxes are drawn side by side
(reference left, variant right; lost boxes red on the left, added ones orange on the right, the rest green) into
``differences/`` of the run folder. Nothing is run again: the boxes are the records' kept detections
(``evaldata/*.detections.npz``), the pictures the dataset's own images. They are not committed with a run (they show
dataset images); ``yoloq report`` draws them where the dataset is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from yoloq.agreement import AGREE_CONF, StoredDetections
from yoloq.passes import detections_path
from yoloq.records import Record

IOU = 0.5
TOP = 3
GREEN, RED, ORANGE = (60, 170, 60), (40, 40, 220), (0, 150, 255)
DIFFERENCES_NOTE = ("Each INT8 variant's images with the most confident boxes (score >= 0.25) it lost against the "
                    "reference or added (same class, IoU >= 0.5), from the kept detections, drawn in differences/ "
                    "(reference left, lost boxes red; variant right, added boxes orange). The pictures show dataset "
                    "images: they are drawn where the dataset is and not committed with a run.")



def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes ``a`` [N, 4] against ``b`` [M, 4]."""
    ax2, ay2, bx2, by2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    w = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    return inter / (a[:, 2:].prod(1)[:, None] + b[:, 2:].prod(1)[None] - inter + 1e-9)


def match(ref: StoredDetections, var: StoredDetections, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                                  np.ndarray]:
    """One image's confident boxes: (reference rows, variant rows, lost mask over the first, added mask over the
    second); rows index the detections arrays."""
    r = np.flatnonzero((ref.det_image == image_id) & (ref.score >= AGREE_CONF))
    v = np.flatnonzero((var.det_image == image_id) & (var.score >= AGREE_CONF))
    r, v = r[np.argsort(-ref.score[r], kind="stable")], v[np.argsort(-var.score[v], kind="stable")]
    lost, added = np.ones(len(r), bool), np.ones(len(v), bool)
    if len(r) and len(v):
        iou = _iou(ref.bbox[r], var.bbox[v])
        iou[ref.category[r][:, None] != var.category[v][None]] = 0.0
        for i in range(len(r)):
            cand = np.where(added, iou[i], 0.0)
            j = int(cand.argmax())
            if cand[j] >= IOU:
                lost[i], added[j] = False, False
    return r, v, lost, added


def most_different(ref: StoredDetections, var: StoredDetections, top: int = TOP) -> list[dict[str, Any]]:
    """The ``top`` images with the most lost plus added confident boxes (ties: the lower image id), none if all
    match."""
    rows = []
    for image_id in sorted(set(ref.image_ids.tolist()) & set(var.image_ids.tolist())):
        _, _, lost, added = match(ref, var, image_id)
        if lost.sum() + added.sum():
            rows.append({"image_id": int(image_id), "lost": int(lost.sum()), "added": int(added.sum())})
    rows.sort(key=lambda x: (-(x["lost"] + x["added"]), x["image_id"]))
    return rows[:top]


def _draw(img: np.ndarray, det: StoredDetections, rows: np.ndarray, odd: np.ndarray, odd_color: tuple,
          names: dict[int, str], title: str) -> np.ndarray:
    import cv2

    out = img.copy()
    for k, i in enumerate(rows):
        x, y, w, h = (int(round(t)) for t in det.bbox[i])
        color = odd_color if odd[k] else GREEN
        cv2.rectangle(out, (x, y), (x + w, y + h), color, 3 if odd[k] else 1)
        cv2.putText(out, f"{names.get(int(det.category[i]), det.category[i])} {det.score[i]:.2f}",
                    (x, max(14, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    cv2.rectangle(out, (0, 0), (out.shape[1], 26), (255, 255, 255), -1)
    cv2.putText(out, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (20, 20, 20), 1, cv2.LINE_AA)
    return out


def write_differences(run_dir: Path, records: list[Record], ref: Record | None) -> list[dict[str, str]]:
    """Draw each INT8 variant's most different images into ``differences/``; one row per picture (variant, image,
    lost, added, file), or a row saying why there is none."""
    import cv2

    if ref is None or not detections_path(run_dir, ref.name).is_file():
        return []
    int8 = [r for r in records if r.ok and r.precision == "int8" and r.name != ref.name
            and detections_path(run_dir, r.name).is_file()]
    if not int8:
        return []
    try:
        from yoloq.config import DataRef
        from yoloq.data import load_split
        from yoloq.paths import REPO_ROOT, from_display

        # the dataset file the run read (a user's own YAML anywhere), else the name in datasets/ (older records)
        file = ref.dataset.get("file")
        found = from_display(file, run_dir) if file else None
        dataset = str(found) if found is not None and found.is_file() else ref.dataset["name"]
        split = load_split(DataRef(dataset, ref.dataset["split"]), REPO_ROOT)
    except Exception as e:  # noqa: BLE001 - the pictures need the dataset here; the report goes on without them
        return [{"variant": r.name, "image": "", "lost": "", "added": "",
                 "file": f"no pictures: dataset not readable here ({str(e)[:120]})"} for r in int8]
    paths = {s.image_id: s.path for s in split.samples}
    names = dict(zip(split.category_ids, split.names))
    reference = StoredDetections.load(detections_path(run_dir, ref.name))
    out = []
    for r in int8:
        var = StoredDetections.load(detections_path(run_dir, r.name))
        picks = most_different(reference, var)
        if not picks:
            out.append({"variant": r.name, "image": "", "lost": "0", "added": "0",
                        "file": "the same confident boxes as the reference on every image"})
        made = max(detections_path(run_dir, x.name).stat().st_mtime for x in (ref, r))
        for p in picks:
            f = run_dir / "differences" / f"{r.name}-{p['image_id']}.jpg"
            row = {"variant": r.name, "image": paths[p["image_id"]].name if p["image_id"] in paths else "",
                   "lost": str(p["lost"]), "added": str(p["added"]), "file": f"differences/{f.name}"}
            if f.is_file() and f.stat().st_mtime >= made:  # drawn from these detections already
                out.append(row)
                continue
            img = cv2.imread(str(paths.get(p["image_id"], "")), cv2.IMREAD_COLOR)
            if img is None:
                continue
            rr, vv, lost, added = match(reference, var, p["image_id"])
            left = _draw(img, reference, rr, lost, RED, names, f"{ref.name}: {int(lost.sum())} lost (red)")
            right = _draw(img, var, vv, added, ORANGE, names, f"{r.name}: {int(added.sum())} added (orange)")
            pic = np.concatenate([left, np.full((img.shape[0], 8, 3), 255, np.uint8), right], 1)
            scale = min(1.0, 1280 / pic.shape[1])
            pic = cv2.resize(pic, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else pic
            f.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(f), pic, [cv2.IMWRITE_JPEG_QUALITY, 85])
            out.append(row)
    return out
