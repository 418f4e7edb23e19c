"""Build the edge-camera model: YOLO11n fine-tuned to the person class on coco1k's tuning split.

    python tests/train_person.py [--epochs 3] [--imgsz 640] [--batch 8] [--images N]

Training starts from ``$YOLOQ_SHARED/models/yolo11n-train.pt`` (yolo11n.pt with BatchNorms that train) and uses
Ultralytics' own trainer on the CPU. Its data is coco1k's *tuning* split with person labels only, built as
symlinks in the cache folder (``$YOLOQ_CACHE``, default ``~/.cache/yoloq``); no coco1k evaluation image is read
(Ultralytics' validation is off). The weights go to ``<cache>/models/yolo11n-person.pt``, where a config's
``model: yolo11n-person.pt`` finds them (``configs/person.yaml``); they are never committed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import yaml

from yoloq.config import DataRef
from yoloq.data import load_split
from yoloq.paths import cache_root, shared_root
from yoloq.provenance import describe, machine


def person_data(root: Path, images: int | None) -> Path:
    """coco1k's tuning split with person labels only, as a YOLO-layout dataset of symlinks under ``root``."""
    split = load_split(DataRef("coco1k-person", "tune", images))
    if root.exists():
        shutil.rmtree(root)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    by_image: dict[int, list[str]] = {}
    for a in split.gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for s in split.samples:
        (root / "images" / s.path.name).symlink_to(s.path.resolve())
        rows = [f"0 {(x + w / 2) / s.width:.6f} {(y + h / 2) / s.height:.6f} {w / s.width:.6f} {h / s.height:.6f}"
                for x, y, w, h in (a["bbox"] for a in by_image.get(s.image_id, []))]
        (root / "labels" / f"{s.path.stem}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
    data = root / "data.yaml"  # 'val' points at the training images: the trainer needs one, validation is off
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images", "names": {0: "person"}}))
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=None, help="use only the first N tuning images")
    args = ap.parse_args()
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(2)
    work = cache_root() / "person"
    data = person_data(work / "data", args.images)
    t0 = time.perf_counter()
    model = YOLO(str(shared_root() / "models" / "yolo11n-train.pt"))
    model.train(data=str(data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device="cpu", workers=2,
                val=False, plots=False, amp=False, seed=0, deterministic=True, project=str(work), name="train",
                exist_ok=True, verbose=False)
    seconds = time.perf_counter() - t0
    dest = cache_root() / "models" / "yolo11n-person.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "train" / "weights" / "last.pt", dest)
    facts = {"epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch, "seconds": round(seconds, 1),
             "images": len(list((work / "data" / "images").iterdir())), "machine": describe(machine()),
             "machine_id": machine()["id"], "weights": "$YOLOQ_CACHE/models/yolo11n-person.pt"}
    (dest.with_suffix(".json")).write_text(json.dumps(facts, indent=1))
    print(json.dumps(facts, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
