"""Sony IMX500, the sensor with an on-chip NPU in the Raspberry Pi AI Camera: INT8 by Sony's Model Compression
Toolkit (post-training quantization for the IMX500 target platform, through Ultralytics' IMX export, on yoloq's
calibration images), converted for the camera by ``imxconv-pt`` (``packerOut.zip``).

Sony's tools pin what yoloq's environment cannot take: they run in their own environment (``yoloq setup imx500``)
behind a one-shot worker. The quantized model MCT exports (an ONNX whose quantizers are MCT's custom ops, with Sony's
multiclass NMS layer at its end) is scored here in ONNX Runtime, as Ultralytics validates an IMX export on a PC: the
camera's arithmetic simulated on the CPU, so it has no latency here. MCT's quantizer ops are Python callbacks (~5 s an
image at 640); the runtime runs them as the standard ops that compute the same float32 arithmetic (``simulation.py``)
once the export has found both give the same outputs bit for bit on calibration images, else MCT's own ops.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from yoloq.backends.base import Artifact, Backend, ExportContext, LayerRun, OptionSpec, Style, TuneCandidate
from yoloq.backends.imx500.simulation import identical, layer_bits, standard_ops
from yoloq.backends.registry import register
from yoloq.backends.scope import CALIBRATION_IMAGES, INT8
from yoloq.backends.sideenv import SideEnv
from yoloq.backends.imx500.process import run_export, warn_memory
from yoloq.backends.imx500.store import cached, keep
from yoloq.errors import BackendUnavailable, ConfigError, ExportError
from yoloq.progress import step

HERE = Path(__file__).resolve().parent
ENV = SideEnv("imx500", HERE / "requirements.txt", "import model_compression_toolkit, edgemdt_tpc, ultralytics",
              "YOLOQ_IMX500_PYTHON", "about 6 GB; Sony's tools pin torch<2.12, networkx<3.6 and mct-quantizers 1.6")
EXPORT_TIMEOUT_S = 4 * 3600
SUPPORTED = ("yolov8n", "yolo11n")  # what Ultralytics' IMX export (MCT's settings for the IMX500) takes: detectors
RUNTIME = ("mct_quantizers", "edgemdt_cl", "onnxruntime_extensions")
MP_IMAGES = 10  # Ultralytics' setting for MCT's mixed-precision search
ERROR_METHODS = ("mse", "noclipping", "mae", "kl", "lp")  # MCT's QuantizationErrorMethod for activations
DEFAULTS = {"mixed_precision_images": MP_IMAGES, "activations_16bit": [], "activation_error_method": "mse",
            "gptq_epochs": 0, "gptq_images": 0, "distill_steps": 0, "qat_steps": 0,
            "centered_anchors": False}
# what the IMX500 could take at 16 bits (besides the box decode): its Detect module's layers and the concatenations;
# MCT drops those that feed a convolution (every concatenation inside the network), and the scores stay 8-bit
# (the sensor's NMS takes 8-bit scores only: imxconv-pt refuses the model otherwise)
HEAD_AND_CONCATS = ("{head}_.*", r"cat(_\d+)?")
GPTQ_EPOCHS, GPTQ_IMAGES = 4, 64  # tune's GPTQ candidate: 256 steps, about 1.5 s each at 640 on two cores
CHECK_IMAGES = 2  # calibration images on which the standard-op simulation must give MCT's ops' outputs bit for bit


class Imx500Runtime:
    """The MCT-quantized ONNX in ONNX Runtime with Sony's NMS op registered: ``[B, K, 6]`` (x1, y1, x2, y2, score,
    class in input pixels) after the model's own NMS. ``standard``: MCT's quantizers as standard ops (the same
    arithmetic, ~20x faster; ONNX Runtime's layout rewrites off, as they change the convolutions' summation order),
    else MCT's own Python ops, as Ultralytics runs them."""

    def __init__(self, path: Path, threads: int, standard: bool = False) -> None:
        import mct_quantizers
        import onnxruntime as ort
        from edgemdt_cl.pytorch.nms import nms_ort  # noqa: F401 - registers Sony's NMS op with ONNX Runtime

        so = mct_quantizers.get_ort_session_options()
        so.enable_mem_reuse = False  # as Ultralytics runs it: MCT's ops alias their buffers
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        model: Any = str(path)
        self.rewritten: dict[str, int] = {}
        if standard:
            import onnx

            std, self.rewritten = standard_ops(onnx.load(str(path)))
            model = std.SerializeToString()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.info: dict[str, Any] = {"threads": threads}

    def outputs(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input: np.ascontiguousarray(batch, np.float32)})

    def predict(self, batch: np.ndarray) -> np.ndarray:
        boxes, scores, labels = self.outputs(batch)[:3]
        return np.concatenate([boxes, scores[..., None], labels[..., None]], axis=-1).astype(np.float32)


def check_standard_ops(path: Path, images: np.ndarray) -> dict[str, Any]:
    """Run MCT's own ops and the standard-op rewrite on ``images`` (NCHW uint8): whether every output is the same
    bit for bit, and what was rewritten. A graph the rewrite cannot take is not identical (MCT's ops then run)."""
    try:
        mct, std = Imx500Runtime(path, 2), Imx500Runtime(path, 2, standard=True)
        same = all(identical(mct.outputs(x[None] / np.float32(255.0)), std.outputs(x[None] / np.float32(255.0)))
                   for x in images)
    except Exception as e:  # noqa: BLE001 - an op or attribute the rewrite does not know: fall back, say why
        return {"images_checked": 0, "identical": False, "error": f"{type(e).__name__}: {e}"[:300]}
    return std.rewritten | {"images_checked": len(images), "identical": bool(same)}


def sensor_memory(folder: Path) -> dict[str, Any]:
    """What imxconv-pt's memory report says of the model on the IMX500 (usage, the chip's memory, whether it fits);
    empty where the converter wrote none."""
    found = next(Path(folder).glob("*MemoryReport.json"), None)
    if found is None:
        return {}
    report = json.loads(found.read_text()).get("Memory Report", {})
    return {"usage": report.get("Memory Usage"), "available": report.get("Total Memory Available On Chip"),
            "runtime": report.get("Runtime Memory Physical Size"), "model": report.get("Model Memory Physical Size"),
            "fits": report.get("Fit In Chip")}


def onnx_file(artifact: Artifact) -> Path:
    """The quantized ONNX MCT exported (the artifact is its folder, or the file itself)."""
    folder = Path(artifact.path)
    found = next(folder.glob("*.onnx"), None) if folder.is_dir() else folder if folder.is_file() else None
    if found is None:
        raise ExportError(f"no quantized ONNX in {folder}")
    return found


def simulated_as_standard(artifact: Artifact) -> bool:
    """Whether the export found the standard-op simulation identical to MCT's own ops."""
    return bool(artifact.info.get("simulation", {}).get("identical"))


@lru_cache(maxsize=8)
def _family(path: str) -> tuple[str, str]:
    from ultralytics import YOLO

    model = YOLO(path)
    return Path(str(model.model.yaml.get("yaml_file", ""))).stem, model.task


def java_version() -> int:
    """The major version of the ``java`` on PATH (0 where there is none)."""
    exe = shutil.which("java")
    if exe is None:
        return 0
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"(?:openjdk|java) (\d+)", out)
    return int(m.group(1)) if m else 0


@register
class Imx500Backend(Backend):
    """Sony IMX500 INT8, simulated on this CPU."""

    name = "imx500"
    precisions = ("int8",)
    sources = ("pt",)
    install_hint = "pip install mct-quantizers edge-mdt-cl onnxruntime-extensions; then 'yoloq setup imx500'"
    libraries = ("mct-quantizers", "edge-mdt-cl", "onnxruntime-extensions")
    style = Style(color="#7f7f7f")
    timed_here = False
    options = {
        "calibration_images": CALIBRATION_IMAGES,
        "nms_conf": OptionSpec(float, 0.001, None, "score threshold of the NMS inside the model (at most eval.conf: "
                               "above it, the model drops boxes the evaluation keeps)", INT8, minimum=0.0, maximum=1.0,
                               at_most="eval.conf"),
        "nms_iou": OptionSpec(float, 0.7, None, "IoU threshold of the NMS inside the model", INT8, minimum=0.0,
                              maximum=1.0),
        "mixed_precision_images": OptionSpec(int, MP_IMAGES, None, "images MCT's mixed-precision search scores each "
                                             "layer's bit widths on (fewer: a faster export, a coarser choice)", INT8,
                                             minimum=1),
        "activations_16bit": OptionSpec(list, None, None, "regular expressions (whole names, as MCT's trace and the "
                                        "quantized ONNX's quantizers name them) of layers whose outputs MCT quantizes "
                                        "at 16 bits besides the box decode, e.g. 'cat_1[3-8]'; '{head}' stands for "
                                        "the Detect module's prefix; more of the sensor's activation memory", INT8,
                                        before=None),
        "gptq_epochs": OptionSpec(int, 0, None, "passes of MCT's gradient-based post-training quantization over the "
                                  "calibration images (the FP32 model's outputs its targets: weights' rounding and "
                                  "biases learned against the IMX500's quantizers); 0: plain post-training "
                                  "quantization, as Ultralytics exports", INT8, minimum=0),
        "gptq_images": OptionSpec(int, 0, None, "calibration images GPTQ learns on, the first of them (the statistics "
                                  "use them all); 0: all", INT8, minimum=0),
        "distill_steps": OptionSpec(int, 0, None, "before MCT quantizes it, the FP32 model distilled through the "
                                    "IMX500's arithmetic (8-bit power-of-two activation ranges, 8-bit weights: fake "
                                    "quantizers) for this many steps on all the calibration images, mirrored and "
                                    "zoomed at random, the FP32 model's outputs the targets; 0: the model as it is",
                                    INT8, minimum=0, before=0),
        "qat_steps": OptionSpec(int, 0, None, "MCT's quantization-aware training in place of its post-training "
                                "quantization: MCT's quantized model trained for this many steps on all the "
                                "calibration images, mirrored and zoomed at random, the FP32 model's outputs the "
                                "targets; it implies centered_anchors (MCT's QAT leaves the decode's constants for "
                                "the converter to quantize: centered, they fit 8 bits in half cells); 0: none",
                                INT8, minimum=0, before=0),
        "centered_anchors": OptionSpec(bool, False, None, "the box decode's anchors counted from the image's centre "
                                       "(the sensor's 8-bit constants then hold every anchor exactly; as Ultralytics "
                                       "exports, anchors past 64 cells, on the stride-8 grid at 640, are off by half "
                                       "a cell); the same boxes in float", INT8, before=False),
        "activation_error_method": OptionSpec(str, "mse", ERROR_METHODS, "how MCT chooses each activation's "
                                              "power-of-two threshold (mse: Ultralytics' setting; noclipping: the "
                                              "largest value)", INT8, before="mse"),
    }

    def version(self) -> str:
        from importlib.metadata import version
        from importlib.util import find_spec

        missing = [m for m in RUNTIME if find_spec(m) is None]
        if missing:
            raise BackendUnavailable(f"the IMX500 simulation needs {', '.join(missing)} ({self.install_hint})")
        return f"mct-quantizers {version('mct-quantizers')}"

    @classmethod
    def key_extra(cls) -> dict[str, str]:
        """The side environment's pins (their hash): another MCT makes another model; and how it is simulated."""
        return {"imx500_pins": ENV.pins_digest(), "imx500_simulation": "standard-ops-checked"}

    def check(self, variant: Any, source: Any) -> None:
        super().check(variant, source)
        family, task = _family(str(source.path))
        if task != "detect" or not any(family.startswith(f) for f in SUPPORTED):
            raise BackendUnavailable(f"Sony's IMX500 export (MCT's settings in Ultralytics) takes YOLOv8n and YOLO11n "
                                     f"detectors only; {source.path.name} is {family or 'unknown'} ({task})")
        ENV.python()
        if java_version() < 17:
            raise BackendUnavailable("imxconv-pt (Sony's IMX500 converter) needs Java 17 or later: "
                                     "apt-get install openjdk-17-jre-headless")

    def setup(self) -> Path:
        """Sony's tools in their own environment, from the pinned requirements (about 6 GB the first time)."""
        from yoloq.progress import say

        if not ENV.is_ready():
            say(f"setting up Sony's IMX500 tools in their own environment, {ENV.env_dir()} (pinned: "
                f"yoloq/backends/imx500/requirements.txt; about 6 GB, a few minutes)")
        return ENV.setup()

    def tune_space(self, machine: Mapping[str, Any]) -> list[TuneCandidate]:
        """Ultralytics' IMX settings, exact anchors, 16 bits where the loss is, thresholds without clipping, and
        what learns against the FP32 model at a CPU budget (each export takes 12-30 min at 640 on two cores:
        ``yoloq tune --candidate`` tries some of them)."""
        return [TuneCandidate(n, o, w) for n, o, w in (
            ("default", {}, "Ultralytics' IMX settings: 8-bit activations but the box decode, MSE thresholds"),
            ("centered", {"centered_anchors": True}, "the box decode's anchors counted from the image's centre, so "
             "the sensor's 8-bit constants hold each exactly"),
            ("centered128", {"centered_anchors": True, "calibration_images": 128}, "centered anchors and MCT on 128 "
             "calibration images (MCT held about 10 GB at 640: within a 16 GB laptop)"),
            ("head16", {"activations_16bit": list(HEAD_AND_CONCATS)}, "16 bits wherever the IMX500 takes them "
             "besides the box decode: the head's convolutions' outputs and the class logits (MCT refuses a 16-bit "
             "output that feeds a convolution, as every concatenation inside the network does; the sensor's NMS "
             "takes 8-bit scores only)"),
            ("noclipping", {"activation_error_method": "noclipping"}, "each activation's power-of-two threshold "
             "from its largest value: no clipping, coarser steps"),
            ("gptq", {"calibration_images": GPTQ_IMAGES, "gptq_epochs": GPTQ_EPOCHS}, f"MCT on the first "
             f"{GPTQ_IMAGES} calibration images (MCT's memory grows with them: this keeps a 640 export within 16 GB) "
             f"and its GPTQ: weights' rounding and biases learned against the FP32 model's outputs through the "
             f"IMX500's quantizers, {GPTQ_EPOCHS} passes over those images (a 22-min export at 640 on two cores, "
             f"16 GB at its peak; Ultralytics' 1000 passes are a GPU's job)"),
            ("distill600", {"calibration_images": GPTQ_IMAGES, "distill_steps": 600}, f"the FP32 model first "
             f"distilled through the IMX500's arithmetic (600 steps on all calibration images, mirrored and zoomed), "
             f"then MCT on the first {GPTQ_IMAGES} of them"),
            ("qat600", {"calibration_images": GPTQ_IMAGES, "qat_steps": 600}, f"MCT on the first {GPTQ_IMAGES} "
             f"calibration images, then its quantization-aware training through its own quantizers (600 steps on "
             f"all calibration images, mirrored and zoomed; anchors centered)"))]

    def untimed_reason(self) -> str:
        return ("not timed here: the network runs on the IMX500 sensor; this CPU only simulates its arithmetic "
                "(time it on the camera: picamera2's IMX500 helper reports the network's own inference time)")

    def export(self, ctx: ExportContext) -> Artifact:
        for pat in ctx.option("activations_16bit") or []:  # before an export of minutes, not inside it
            try:
                re.compile(pat.replace("{head}", "model_0"))
            except re.error as e:
                raise ConfigError(f"options.activations_16bit: {pat!r} is not a regular expression ({e})") from None
        head = replace(ctx.source.head, end2end=False, reason="Sony's multiclass NMS layer inside the model (on the "
                                                              "IMX500), as Ultralytics' IMX export builds it")
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        cal = ctx.workdir / "calibration.npy"
        images = [np.rint(x[0] * 255.0).astype(np.uint8)  # exact: yoloq's inputs are uint8 pixels / 255
                  for x in ctx.calibration_images().batches(ctx.imgsz, progress="  loading calibration")]
        if not images:
            raise ExportError("no calibration image could be read")
        stack = np.stack(images)
        out, done = ctx.workdir / "imx500", ctx.workdir / "done.json"
        req = {"model": str(ctx.source.path), "imgsz": ctx.imgsz, "calibration": str(cal), "out": str(out),
               "conf": ctx.option("nms_conf"), "iou": ctx.option("nms_iou"), "max_det": ctx.max_det,
               "reply": str(ctx.workdir / "reply.json"), "mixed_precision_images": ctx.option("mixed_precision_images"),
               "activations_16bit": list(ctx.option("activations_16bit") or []),
               "activation_error_method": ctx.option("activation_error_method"),
               "gptq_epochs": ctx.option("gptq_epochs"), "gptq_images": ctx.option("gptq_images"),
               "distill_steps": ctx.option("distill_steps"), "qat_steps": ctx.option("qat_steps"),
               "centered_anchors": ctx.option("centered_anchors") or ctx.option("qat_steps") > 0}
        made = [ctx.source.sha256, ENV.pins_digest(), hashlib.sha256(stack).hexdigest(), req["imgsz"], req["conf"],
                req["iou"], req["max_det"]] + [req[k] for k, default in DEFAULTS.items()
                                               if req[k] != default]  # a default keeps the key exports had before
        made += [ctx.calibration.sha256] if req["distill_steps"] or req["qat_steps"] else []  # training: all images
        key = hashlib.sha256(json.dumps(made).encode()).hexdigest()
        reply = json.loads(done.read_text()) if done.is_file() else {}
        if reply.get("key") != key or not (out / "packerOut.zip").is_file():  # else: this very export, made before
            reply = cached(key, out) or self._distilled_export(ctx, req, stack)
            done.with_suffix(".partial").write_text(json.dumps(reply | {"key": key}))
            os.replace(done.with_suffix(".partial"), done)
            keep(key, out, reply)
        memory = sensor_memory(out)
        if memory.get("fits") is False:
            raise ExportError(f"the IMX500 model does not fit the sensor: {memory['usage']} of {memory['available']} "
                              f"(imxconv-pt's memory report); quantize fewer layers at 16 bits or use a smaller imgsz")
        with step(f"check {ctx.variant.label}'s simulation: MCT's ops against the same arithmetic in standard ops"):
            sim = check_standard_ops(next(out.glob("*.onnx")), stack[:CHECK_IMAGES])
        head_info = head.describe() | {"nms_in_model": True, "nms": {"conf": req["conf"], "iou": req["iou"],
                                                                     "max_det": req["max_det"]}}
        return Artifact(out, self.name, "int8", {
            "head": head_info, "quantizer": f"Sony MCT {'QAT' if req['qat_steps'] else 'post-training quantization'}, "
            "IMX500 target platform (TPC 4.0), "
            "mixed-precision weights within the IMX500's weight memory, 16-bit activations on the box decode "
            "(Ultralytics' IMX settings)", "calibration_used": reply["calibration_used"],
            "export_seconds": reply["seconds"] + (reply.get("distill") or {}).get("s", 0.0),
            "toolkit": reply["versions"], "camera_package": "packerOut.zip",
            "export_memory": reply.get("memory"),
            "simulation": sim, "sensor_memory": memory}
            | {k: reply[k] for k in ("activations_16bit", "activations_16bit_refused") if reply.get(k)}
            | ({"centered_anchors": True} if req["centered_anchors"] else {})
            | ({"gptq": {"epochs": req["gptq_epochs"], "images": reply.get("gptq_images"),
                         "loss_by_epoch": reply.get("gptq_loss")}} if req["gptq_epochs"] else {})
            | ({"distill_result": reply["distill"], "recovery_cost": {"distill": {
                k: reply["distill"][k] for k in ("s", "peak_rss_mb")}}}
               if reply.get("distill") else {})
            | ({"qat_result": reply["qat"], "recovery_cost": {"qat": {
                "s": reply["qat"]["s"], "peak_rss_mb": reply.get("peak_rss_mb")}}} if reply.get("qat") else {}))

    def _distilled_export(self, ctx: ExportContext, req: dict[str, Any], stack: np.ndarray) -> dict[str, Any]:
        """MCT's export of the model, distilled first through the IMX500's arithmetic where ``distill_steps`` asks
        (:mod:`yoloq.backends.imx500.distill`: the checkpoint MCT is given instead of the source's); with
        ``qat_steps``, all the calibration images go to the worker for MCT's QAT (:mod:`.mct_qat`)."""
        stack = warn_memory(stack)  # before minutes of distillation, not after them
        if req["qat_steps"]:  # all calibration images, as uint8 pixels, for the worker to train on
            np.save(ctx.workdir / "qat-images.npy", np.stack([np.rint(x[0] * 255.0).astype(np.uint8) for x in
                    ctx.calibration.batches(ctx.imgsz, progress="  loading the training images")]))
            req = req | {"qat_images": str(ctx.workdir / "qat-images.npy")}
        if not req["distill_steps"]:
            return self._run_worker(ctx, req, stack)
        from yoloq.backends.imx500.distill import distill_for_sensor
        from yoloq.progress import say
        from yoloq.recover.cost import measured

        cost: dict[str, Any] = {}
        with measured(cost, "distill"), step(f"distillation through the IMX500's arithmetic ({req['distill_steps']} "
                                             f"steps, {len(ctx.calibration.images)} calibration images)"):
            images = list(ctx.calibration.batches(ctx.imgsz, progress="  loading distillation images"))
            ckpt, result = distill_for_sensor(ctx.source, images, ctx.imgsz, req["distill_steps"], ctx.threads,
                                              ctx.workdir / "distilled" / Path(ctx.source.path).name, say)
        reply = self._run_worker(ctx, req | {"model": str(ckpt)}, stack)
        return reply | {"distill": result | cost["distill"]}  # s: thresholds, training and the checkpoint

    def _run_worker(self, ctx: ExportContext, req: dict[str, Any], images: np.ndarray) -> dict[str, Any]:
        try:
            return run_export(ENV.python(), HERE / "worker.py", ctx.workdir, ctx.variant.label, req, images,
                              EXPORT_TIMEOUT_S)
        finally:  # QAT's training images (all the calibration images at imgsz) are not kept with the export
            if req.get("qat_images"):
                Path(req["qat_images"]).unlink(missing_ok=True)

    def load(self, artifact: Artifact, threads: int, device: str = "cpu") -> Imx500Runtime:
        standard = simulated_as_standard(artifact)
        rt = Imx500Runtime(onnx_file(artifact), threads, standard)
        rt.info["precision_ran"] = ("int8 (IMX500, simulated on CPU: MCT's quantizers as standard ONNX ops, checked "
                                    "bit for bit against MCT's own)" if standard else
                                    "int8 (IMX500, simulated on CPU: MCT's quantizers in ONNX Runtime)")
        return rt

    def explain(self, artifact: Artifact, batch: np.ndarray, threads: int, runs: int = 5) -> list[LayerRun]:
        """Each convolution and matmul of MCT's quantized model with the bits the IMX500 runs it at (its weights'
        quantizer and its input's) and its MACs (its output's shape from one simulated run on ``batch``); no times:
        the network runs on the sensor."""
        import onnx

        path = onnx_file(artifact)
        model = onnx.load(str(path))
        convs = [n.output[0] for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
        probe = onnx.ModelProto.FromString(model.SerializeToString())
        probe.graph.output.extend(onnx.helper.make_tensor_value_info(c, onnx.TensorProto.FLOAT, None) for c in convs)
        with tempfile.TemporaryDirectory() as tmp:
            onnx.save(probe, str(Path(tmp) / path.name))
            rt = Imx500Runtime(Path(tmp) / path.name, threads, simulated_as_standard(artifact))
            values = rt.session.run(convs, {rt.input: np.ascontiguousarray(batch, np.float32)})
        return layer_bits(model, {c: v.shape for c, v in zip(convs, values, strict=True)})

    def deploy_notes(self, model_file: str) -> tuple[dict[str, Any], list[str]]:
        return {}, [
            f"On the Raspberry Pi with the AI Camera: `sudo apt install imx500-all`, then "
            f"`imx500-package -i {model_file}/packerOut.zip -o rpk` makes `rpk/network.rpk`, the file picamera2's "
            f"IMX500 helper loads (`IMX500('rpk/network.rpk')`; labels: `{model_file}/labels.txt`).",
            "The network ends in Sony's NMS: its outputs are boxes (x1, y1, x2, y2 in input pixels of the letterboxed "
            "input), scores, classes and the count; undo the letterbox on the Pi as predict.py does.",
            "predict.py here runs the simulated model (model_imx.onnx) on a PC: the same detections the camera "
            "computes, up to the NPU's rounding."]

