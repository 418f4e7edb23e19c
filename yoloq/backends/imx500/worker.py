"""The IMX500 export worker: runs inside the side environment (``yoloq setup imx500``), never inside yoloq's process.

It imports only the standard library, numpy, torch and Ultralytics, and runs Ultralytics' IMX export (Sony's Model
Compression Toolkit, post-training quantization for the IMX500 target platform with the memory-bound mixed precision
Ultralytics sets, then ``imxconv-pt``, which needs Java) with yoloq's calibration images in place of the exporter's
own dataset. One request: the path of a JSON file with ``model`` (a ``.pt``), ``imgsz``, ``calibration`` (an ``.npy``
of NCHW float32 inputs in [0, 1], yoloq's letterbox), ``conf``, ``iou``, ``max_det`` (the NMS the model carries),
``out`` (the folder to create) and ``reply`` (where the JSON reply goes: ``ok``, ``seconds``, ``versions`` or
``error``); optionally ``mixed_precision_images`` (how many images MCT's mixed-precision search scores each layer's
bit widths on; Ultralytics sets 10).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path


def export(req: dict) -> dict:
    from importlib.metadata import version

    import numpy as np
    import torch
    from ultralytics import YOLO
    from ultralytics.engine.exporter import Exporter

    images = np.load(req["calibration"])
    batches = [{"img": torch.from_numpy(images[i:i + 1] * 255.0)} for i in range(len(images))]  # MCT divides by 255
    Exporter.get_int8_calibration_dataloader = lambda self, prefix="": batches  # yoloq's images, not a dataset yaml
    if req.get("mixed_precision_images"):
        import model_compression_toolkit as mct

        base, n = mct.core.MixedPrecisionQuantizationConfig, int(req["mixed_precision_images"])

        class MixedPrecision(base):  # Ultralytics' config with the number of images the search scores on
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **(kwargs | {"num_of_images": n}))

        mct.core.MixedPrecisionQuantizationConfig = MixedPrecision
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pt = Path(tmp) / Path(req["model"]).name
        shutil.copy2(req["model"], pt)
        out = YOLO(str(pt)).export(format="imx", imgsz=req["imgsz"], batch=1, device="cpu", conf=req["conf"],
                                   iou=req["iou"], max_det=req["max_det"], data="coco8.yaml")
        shutil.move(str(out), req["out"])
    return {"seconds": round(time.perf_counter() - t0, 1), "calibration_used": len(batches),
            "versions": {p: version(p) for p in ("model-compression-toolkit", "edge-mdt-tpc", "mct-quantizers",
                                                  "imx500-converter", "ultralytics", "torch")}}


def main() -> None:
    req = json.loads(Path(sys.argv[1]).read_text())
    try:
        reply = {"ok": True, **export(req)}
    except BaseException as e:  # noqa: BLE001 - one line back to yoloq, the traceback to the log
        traceback.print_exc()
        lines = str(e).strip().splitlines()
        reply = {"ok": False, "error": f"{type(e).__name__}: {lines[-1] if lines else ''}"[:500]}
    Path(req["reply"]).write_text(json.dumps(reply))


if __name__ == "__main__":
    main()
