"""The IMX500 export worker: runs inside the side environment (``yoloq setup imx500``), never inside yoloq's process.

It imports only the standard library, numpy, torch and Ultralytics, and runs Ultralytics' IMX export (Sony's Model
Compression Toolkit, post-training quantization for the IMX500 target platform with the memory-bound mixed precision
Ultralytics sets, then ``imxconv-pt``, which needs Java) with yoloq's calibration images in place of the exporter's own
dataset. One request: the path of a JSON file with ``model`` (a ``.pt``), ``imgsz``, ``calibration`` (an ``.npy`` of
NCHW float32 inputs in [0, 1], yoloq's letterbox), ``conf``, ``iou``, ``max_det`` (the NMS the model carries), ``out``
(the folder to create) and ``reply`` (where the JSON reply goes: ``ok``, ``seconds``, ``versions`` or ``error``);
optionally ``mixed_precision_images`` (how many images MCT's mixed-precision search scores each layer's bit widths on;
Ultralytics sets 10), ``activations_16bit`` (regular expressions over the layers' names as MCT's torch.fx trace names
them, e.g. ``cat_4``, ``{head}`` standing for the Detect module's prefix: those layers' outputs quantized at 16 bits
besides the box decode Ultralytics sets), ``centered_anchors`` (the box decode's anchors counted from the image's
centre: :func:`center_anchors`) and ``activation_error_method`` (MCT's threshold selection for activations: ``mse``, as
Ultralytics leaves it, ``noclipping``, ``mae``, ``kl`` or ``lp``) and ``gptq_epochs`` (MCT's gradient-based
post-training quantization for that many passes over the calibration images, the FP32 model's outputs its targets,
instead of plain post-training quantization; Ultralytics' export has it off) on the first ``gptq_images`` of them (all
when 0); ``qat_steps`` (MCT's quantization-aware training in place of its post-training quantization, that many steps on
``qat_images``, a uint8 ``.npy``: :mod:`mct_qat` beside this script).

``imxconv-pt`` does not run here: the reply's ``convert`` is its command line with ``{out}`` for the output folder,
which yoloq runs once this process has ended and its memory is free (MCT holds gigabytes until then). Progress goes to
stdout as ``yoloq-progress`` lines (phase, n, total), which yoloq relays to its console.
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
    if req.get("centered_anchors"):
        center_anchors()
    extra16 = SixteenBit(req.get("activations_16bit") or [])
    if req.get("activation_error_method", "mse") != "mse":
        import model_compression_toolkit as mct

        method = mct.core.QuantizationErrorMethod[req["activation_error_method"].upper()]
        quant = mct.core.QuantizationConfig

        class Quantization(quant):  # Ultralytics' config with another threshold selection for activations
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **(kwargs | {"activation_error_method": method}))

        mct.core.QuantizationConfig = Quantization
    report_progress(len(batches))
    convert = defer_imxconv()
    gptq_images = min(len(batches), int(req.get("gptq_images") or len(batches)))
    if req.get("gptq_epochs"):
        use_gptq(int(req["gptq_epochs"]), gptq_images)
    qat: dict = {}
    if req.get("qat_steps"):  # this script's folder is on sys.path: the module beside it
        from mct_qat import RESULT as qat, use_qat

        use_qat(int(req["qat_steps"]), req["qat_images"], req["imgsz"],
                lambda n, total: progress("QAT (steps)", n, total))
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
    if not convert:
        raise RuntimeError("Ultralytics' IMX export did not reach imxconv-pt")
    import resource

    return {"seconds": round(time.perf_counter() - t0, 1), "calibration_used": len(batches), "convert": convert[-1],
            "gptq_images": gptq_images if req.get("gptq_epochs") else None,
            "gptq_loss": [sum(v) / len(v) for _, v in sorted(GPTQ_LOSS.items())] or None, "qat": qat or None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "activations_16bit": extra16.chosen, "activations_16bit_refused": extra16.refused,
            "versions": {p: version(p) for p in ("model-compression-toolkit", "edge-mdt-tpc", "mct-quantizers",
                                                  "imx500-converter", "ultralytics", "torch")}}


PROGRESS = "yoloq-progress"


def progress(phase: str, n: int, total: int | None) -> None:
    print(f"{PROGRESS}\t{phase}\t{n}\t{total or ''}", flush=True)


class Reported:
    """What MCT's tqdm bars become: a ``yoloq-progress`` line per step (yoloq relays them with an ETA)."""

    def __init__(self, iterable=None, desc: str | None = None, total: int | None = None, phase: str = "",  # noqa: ANN001
                 offset: int = 0, silent: bool = False, **_: object) -> None:
        if isinstance(iterable, enumerate):  # MCT's mixed-precision loop: a list of layers, so its length is known
            iterable = list(iterable)
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.phase, self.total, self.n, self.offset = iterable, phase or desc or "working", total, 0, offset
        self.silent = silent

    def __iter__(self):  # noqa: ANN204
        for x in self.iterable:
            yield x
            self.update()

    def __len__(self) -> int:
        return len(self.iterable)

    def update(self, k: int = 1) -> None:
        self.n += k
        if not self.silent:
            progress(self.phase, self.offset + self.n, self.total)

    def __enter__(self) -> "Reported":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None

    def set_description(self, *_: object, **__: object) -> None:
        return None

    def set_postfix(self, *_: object, **__: object) -> None:
        return None


def report_progress(images: int) -> None:
    """MCT's progress bars in the steps that take minutes become ``yoloq-progress`` lines with their totals."""
    import functools

    import model_compression_toolkit.core.common.mixed_precision.mixed_precision_search_manager as mp
    import model_compression_toolkit.core.common.quantization.quantization_params_generation.qparams_computation as qp
    import model_compression_toolkit.core.quantization_prep_runner as prep

    prep.tqdm = functools.partial(Reported, phase="statistics collection (images)", total=images)
    qp.tqdm = functools.partial(Reported, phase="quantization parameters (layers)")
    mp.tqdm = functools.partial(Reported, phase="mixed-precision search (layers scored)")
    import model_compression_toolkit as mct

    export = mct.exporter.pytorch_export_model

    def exported(*a, **k):  # noqa: ANN002, ANN003, ANN202 - MCT's signature
        progress("export of the quantized model to ONNX", 0, None)
        return export(*a, **k)

    mct.exporter.pytorch_export_model = exported


def defer_imxconv() -> list[list[str]]:
    """Keep Ultralytics' export from running imxconv-pt inside this process (MCT's memory still held): its command
    line is noted, the paths as ``{onnx}`` and ``{out}``, and yoloq runs it after this process ends."""
    import subprocess

    import ultralytics.utils.export.imx as imx

    noted: list[list[str]] = []
    real = subprocess.run

    def run(args, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202 - subprocess.run's signature
        if isinstance(args, (list, tuple)) and Path(str(args[0])).name.startswith("imxconv-pt"):
            i, o = args.index("-i"), args.index("-o")
            cmd = ["imxconv-pt" if j == 0 else "{out}/" + Path(str(x)).name if j == i + 1 else "{out}" if j == o + 1
                   else str(x) for j, x in enumerate(args)]
            noted.append(cmd)
            progress("quantized ONNX written", 1, 1)
            return subprocess.CompletedProcess(args, 0)
        return real(args, *a, **k)

    class Subprocess:  # the subprocess module as imx.py sees it, but for run
        def __getattr__(self, name: str) -> object:
            return getattr(subprocess, name)

    Subprocess.run = staticmethod(run)
    imx.subprocess = Subprocess()
    return noted


def image_centre(feats, strides) -> tuple:  # noqa: ANN001 - make_anchors' arguments: [(h, w)] per level, strides
    """Each anchor's shift to the image's centre in its level's cells ([N, 2], x then y, in make_anchors' order),
    and the centre in pixels ([2, 1])."""
    import torch

    sizes = [(int(f[0]), int(f[1])) for f in feats]
    shift = torch.cat([torch.tensor([w / 2, h / 2]).expand(h * w, 2) for h, w in sizes])
    h0, w0 = sizes[0]
    return shift, torch.tensor([[w0 * float(strides[0]) / 2], [h0 * float(strides[0]) / 2]])


def center_anchors() -> None:
    """The box decode with anchors the IMX500's 8-bit constants hold exactly. MCT quantizes the decode's anchor grid (a
    constant operand of its subtraction and addition) at 8 bits with a power-of-two threshold per anchor, so an
    anchor whose larger coordinate passes 64 cells (on the stride-8 grid at 640: 2,304 of its 6,400 anchors) gets a
    step of 2 cells: its half-cell coordinates are rounded, its box moved by half a cell (4 pixels). Here each
    level's anchors are counted from the image's centre (at most half its width in cells: 39.5 at 640, a step of 0.5
    at most, exact) and the centre, in pixels, is added back after the strides (an exact constant too); the added
    node's output is quantized at 16 bits as the decode's others are. The same boxes in float; the model MCT sees is
    otherwise Ultralytics'."""
    import torch
    import ultralytics.utils.export.imx as imx

    make, state = imx.make_anchors, {}

    def centered(feats, strides, offset=0.5):  # noqa: ANN001, ANN202 - make_anchors' signature
        anchors, stride = make(feats, strides, offset)
        shift, state["center"] = image_centre(feats, strides)
        return anchors - shift.type_as(anchors), stride

    def inference(self, x):  # noqa: ANN001, ANN202 - Ultralytics' _inference
        center = self.decode_bboxes(torch.zeros(1, 4, 1), state["center"].unsqueeze(0))  # [1, 4, 1] in pixels
        dbox = self.decode_bboxes(self.dfl(x["boxes"]), self.anchors.unsqueeze(0)) * self.strides + center
        return dbox.transpose(1, 2), x["scores"].sigmoid().permute(0, 2, 1)

    imx.make_anchors, imx._inference = centered, inference
    for family in imx.MCT_CONFIG.values():  # the added node: the addition after the decode's last one
        names = family["detect"]["layer_names"]
        last = max(int(n[4:]) for n in names if re.fullmatch(r"add_\d+", n))
        names.append(f"add_{last + 1}")


GPTQ_LOSS: dict[int, list[float]] = {}  # each GPTQ epoch's step losses (the quantized model against the FP32 one)


def use_gptq(epochs: int, images: int) -> None:
    """Ultralytics' export with MCT's GPTQ (``torch2imx(gptq=True)``, which its exporter never passes) for ``epochs``
    passes over the first ``images`` calibration images (the statistics still use them all) instead of its
    hard-coded 1000 over all, its progress reported per image."""
    import functools
    import itertools

    import model_compression_toolkit as mct
    import model_compression_toolkit.gptq.pytorch.gptq_training as training
    import ultralytics.utils.export.imx as imx

    config = mct.gptq.get_pytorch_gptq_config
    state = {"epoch": -1}

    def log(loss, *_: object) -> None:  # noqa: ANN001 - MCT's log_function: each step's loss against the FP32 model
        GPTQ_LOSS.setdefault(state["epoch"], []).append(float(loss))

    mct.gptq.get_pytorch_gptq_config = lambda n_epochs, **k: config(epochs, **(k | {"log_function": log}))

    def bars(iterable=None, desc=None, **k):  # noqa: ANN001, ANN003, ANN202 - tqdm's signature
        if desc:  # the epochs: silent, the images below count for both
            return Reported(iterable, desc, silent=True)
        state["epoch"] += 1
        try:
            n = len(iterable)
        except TypeError:  # a loader over an iterable dataset: one image a batch
            n = images
        return Reported(iterable, phase="GPTQ (images x epochs)", total=n * epochs, offset=state["epoch"] * n)

    training.tqdm = bars
    trainer = training.PytorchGPTQTrainer
    loader = trainer._prepare_train_dataloader_for_non_sla
    trainer._prepare_train_dataloader_for_non_sla = lambda self, gen: loader(
        self, lambda: itertools.islice(gen(), images))
    original = imx.torch2imx
    imx.torch2imx = functools.wraps(original)(lambda *a, **k: original(*a, **(k | {"gptq": True})))


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
