"""The IMX500 export worker: runs inside the side environment (``yoloq setup imx500``), never inside yoloq's process.

It imports only the standard library, numpy, torch and Ultralytics, and runs Ultralytics' IMX export (Sony's Model
Compression Toolkit, post-training quantization for the IMX500 target platform with the memory-bound mixed precision
Ultralytics sets, then ``imxconv-pt``, which needs Java) with yoloq's calibration images in place of the exporter's
own dataset. One request: the path of a JSON file with ``model`` (a ``.pt``), ``imgsz``, ``calibration`` (an ``.npy``
of NCHW float32 inputs in [0, 1], yoloq's letterbox), ``conf``, ``iou``, ``max_det`` (the NMS the model carries),
``out`` (the folder to create) and ``reply`` (where the JSON reply goes: ``ok``, ``seconds``, ``versions`` or
``error``); optionally ``mixed_precision_images`` (how many images MCT's mixed-precision search scores each layer's
bit widths on; Ultralytics sets 10), ``activations_16bit`` (regular expressions over the layers' names as MCT's
torch.fx trace names them, e.g. ``cat_4``, ``{head}`` standing for the Detect module's prefix: those layers' outputs
quantized at 16 bits besides the box decode Ultralytics sets) and ``activation_error_method`` (MCT's threshold
selection for activations: ``mse``, as Ultralytics leaves it, ``noclipping``, ``mae``, ``kl`` or ``lp``).
"""

from __future__ import annotations

import json
import re
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
    extra16 = SixteenBit(req.get("activations_16bit") or [])
    if req.get("activation_error_method", "mse") != "mse":
        import model_compression_toolkit as mct

        method = mct.core.QuantizationErrorMethod[req["activation_error_method"].upper()]
        quant = mct.core.QuantizationConfig

        class Quantization(quant):  # Ultralytics' config with another threshold selection for activations
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **(kwargs | {"activation_error_method": method}))

        mct.core.QuantizationConfig = Quantization
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pt = Path(tmp) / Path(req["model"]).name
        shutil.copy2(req["model"], pt)
        while True:
            try:
                out = YOLO(str(pt)).export(format="imx", imgsz=req["imgsz"], batch=1, device="cpu",
                                           conf=req["conf"], iou=req["iou"], max_det=req["max_det"],
                                           data="coco8.yaml")
                break
            except Exception as e:
                if not extra16.retry(e):
                    raise
                print(f"yoloq: MCT refuses 16 bits for {extra16.refused[-1]} on the IMX500: exporting without it",
                      flush=True)
        shutil.move(str(out), req["out"])
    return {"seconds": round(time.perf_counter() - t0, 1), "calibration_used": len(batches),
            "activations_16bit": extra16.chosen, "activations_16bit_refused": extra16.refused,
            "versions": {p: version(p) for p in ("model-compression-toolkit", "edge-mdt-tpc", "mct-quantizers",
                                                  "imx500-converter", "ultralytics", "torch")}}


class SixteenBit:
    """Has Ultralytics' IMX export quantize the outputs of the layers ``patterns`` match at 16 bits. ``chosen``: the
    layers matched (filled in when the export traces the model); ``refused``: those MCT rejects for the IMX500 (a
    16-bit output whose consumer takes 8-bit inputs only, a convolution's, say), dropped one by one by ``retry``."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns, self.chosen, self.refused = patterns, [], []
        if not patterns:
            return
        import ultralytics.utils.export.imx as imx

        original, base = imx.torch2imx, {}

        def torch2imx(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - Ultralytics' signature
            family = "YOLO11" if "C2PSA" in model.__str__() else "YOLOv8"
            config = imx.MCT_CONFIG[family][model.task]
            base.setdefault("names", list(config["layer_names"]))
            if not self.chosen and not self.refused:
                self.chosen = self._match(model)
            config["layer_names"] = base["names"] + [n for n in self.chosen if n not in base["names"]]
            return original(model, *args, **kwargs)

        imx.torch2imx = torch2imx

    def _match(self, model) -> list[str]:  # noqa: ANN001 - Ultralytics' model
        from model_compression_toolkit.core.pytorch.reader.reader import _trace_model

        gm = _trace_model(model)
        nodes = [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")
                 and (n.target if n.op == "call_method" else getattr(n.target, "__name__", "")) not in SHAPE_OPS
                 and not _fused(gm, n)]
        head = f"model_{len(model.model) - 1}"  # the Detect module, last in Ultralytics' model list
        wanted = [p.replace("{head}", head) for p in self.patterns]
        chosen = [n.name for n in nodes if any(re.fullmatch(p, n.name) for p in wanted)]
        if not chosen:
            raise ValueError(f"activations_16bit: no layer's name matches {self.patterns} (names as MCT's trace gives "
                             f"them, e.g. {', '.join(n.name for n in nodes[-5:])})")
        return chosen

    def retry(self, error: BaseException) -> bool:
        """Whether ``error`` is MCT refusing 16 bits for one of the chosen layers (then dropped: export again)."""
        m = re.search(r"bit-width 16 is invalid for node (?:\w+:)?(\w+)", str(error))  # "type:name"
        if not m or m.group(1) not in self.chosen:
            return False
        self.chosen.remove(m.group(1))
        self.refused.append(m.group(1))
        if not self.chosen:
            raise ValueError(f"activations_16bit: MCT takes none of {self.refused} at 16 bits on the IMX500 (each "
                             f"feeds a layer that takes 8-bit inputs only)") from None
        return True


def _fused(gm, node) -> bool:  # noqa: ANN001 - torch.fx objects
    """A convolution MCT fuses with the activation after it (the activation's output is what is quantized)."""
    import torch

    if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), torch.nn.Conv2d):
        return False
    users = list(node.users)
    return len(users) == 1 and users[0].op == "call_module" and isinstance(
        gm.get_submodule(users[0].target), (torch.nn.SiLU, torch.nn.ReLU, torch.nn.Sigmoid, torch.nn.Hardswish))


SHAPE_OPS = {"getitem", "getattr", "size", "view", "reshape", "split", "chunk", "permute", "transpose", "flatten",
             "unsqueeze", "squeeze", "contiguous", "expand", "repeat", "to", "float", "type_as"}


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
