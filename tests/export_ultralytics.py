"""Make Ultralytics' own OpenVINO INT8 export of YOLO11n, to compare beside yoloq's variants.

    python tests/export_ultralytics.py [--imgsz 640]

``YOLO("yolo11n.pt").export(format="openvino", int8=True, data=...)``, Ultralytics' exporter and its NNCF settings,
calibrated on coco128 train2017 (Ultralytics calibrates on its data's 'val' split; it points at train images here,
never at an evaluation image). The folder goes to the cache (``$YOLOQ_CACHE/exports/``, never committed), where
``configs/ultralytics-openvino.yaml`` names it as a variant's ``artifact``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

from yoloq.data.yolo import coco80
from yoloq.paths import cache_root, shared_root


def ultralytics_openvino_int8(dest: Path, imgsz: int, fraction: float = 1.0) -> Path:
    """``YOLO("yolo11n.pt").export(format="openvino", int8=True)`` into ``dest``; returns the export folder."""
    from ultralytics import YOLO

    dest.mkdir(parents=True, exist_ok=True)
    pt = dest / "yolo11n.pt"
    if not pt.exists():
        pt.symlink_to(shared_root() / "models" / "yolo11n.pt")  # Ultralytics writes beside the model: here
    data = dest / "calibration.yaml"
    data.write_text(yaml.safe_dump({"path": str(shared_root() / "datasets" / "coco128"), "train": "images/train2017",
                                    "val": "images/train2017", "names": dict(enumerate(coco80()[0]))}))
    return Path(YOLO(str(pt)).export(format="openvino", int8=True, data=str(data), imgsz=imgsz, batch=1,
                                     fraction=fraction))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, default=640)
    args = ap.parse_args()
    work = cache_root() / "exports"
    folder = ultralytics_openvino_int8(work / "work", args.imgsz)
    dest = work / folder.name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.move(str(folder), dest)
    print(f"written: {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
