"""Rockchip RKNN (edge-camera NPUs: RK3588, RK3566/RK3568, RV1106/RV1103): FP16 and INT8, scored by the toolkit's
simulator on this machine, through the same scoring loop as every other format.

The toolkit runs in its own environment (:mod:`yoloq.backends.rknn.sideenv`), behind a worker process. The
model is split as Rockchip lays YOLO out for its NPUs: the network up to the head's last convolutions runs on
the NPU (``model.rknn``), the box decoding (DFL, anchors, strides, the class sigmoid) runs in float on the
CPU (``tail.onnx``, ONNX Runtime), found by the same head rules by structure as every backend
(``keep_head_float``: ``decode``, the default; ``outputs`` keeps the head's output convolutions on the CPU too;
``none`` puts the whole graph on the NPU, which the toolkit may refuse). Inputs are the letterboxed RGB
pixels as uint8 NCHW with the 1/255 scaling inside the model (``mean 0, std 255``), as on the board.

The simulator is no measure of speed: RKNN variants are not timed on the host; name a Ray ``target:`` whose node
is a board with rknn-toolkit-lite2 to time them there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from yoloq.backends.base import (
    Artifact,
    Backend,
    ExportContext,
    GroupError,
    LayerRun,
    OptionSpec,
    Style,
    TuneCandidate,
)
from yoloq.backends.onnx_base import base_onnx
from yoloq.backends.registry import register
from yoloq.backends.rknn import sideenv
from yoloq.backends.rknn.analysis import conv_macs, executed, group_errors, layer_errors
from yoloq.backends.rknn.graph import block_ends, split_head, to_pixels
from yoloq.backends.scope import CALIBRATION_IMAGES
from yoloq.errors import BackendUnavailable, ExportError
from yoloq.progress import step

ON_BOARD = find_spec("rknnlite") is not None  # rknn-toolkit-lite2: a Rockchip board's own runtime
PLATFORMS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562", "rv1106", "rv1106b", "rv1103", "rv1103b", "rv1126b")
# rknn-toolkit2 2.5.0 fails on YOLO11's / YOLO12's attention while fusing it into one SDPA op (IndexError in
# its fuse rule, at 320 and at 640): that one rule is left out, the attention runs as its MatMul/Softmax ops.
DISABLED_RULES = ("fuse_exmatmul_add_mul_exsoftmax13_exmatmul_to_sdpa",)


# The worker of each export in this process, its model still in the simulator: the runtime that loads that export
# next takes it over instead of building again (a build calibrates; MMSE ranges take minutes). Keyed by the file,
# checked by its hash.
_SIMULATING: dict[str, tuple[sideenv.Worker, str]] = {}


def simulating(pkg: Path, tmp: Path) -> tuple[sideenv.Worker, bool]:
    """A worker with the export in ``pkg`` in the simulator, and whether its bytes are the export's: the export's
    own worker when this process made it (taken over), else a new one that builds it again from the same ONNX,
    settings and calibration (the simulator runs only a model built in its own session)."""
    live = _SIMULATING.pop(str(pkg), None)
    if live is not None and live[1] == _sha(pkg / "model.rknn"):
        return live[0], True
    if live is not None:
        live[0].close()
    folder, build = pkg.parent, json.loads((pkg / "build.json").read_text())
    dataset = None
    if build["quantize"]:
        dataset = str(tmp / "dataset.txt")
        Path(dataset).write_text("".join(f"{folder / 'calibration' / n}\n" for n in build["calibration"]))
    worker, _ = _simulate(folder / "toolkit.log", sideenv.Build(
        str(folder / "body.onnx"), str(tmp / "simulated.rknn"), build["config"], build["quantize"], dataset,
        simulate=True, auto_hybrid=build.get("auto_hybrid", False), hybrid=build.get("hybrid") or None))
    return worker, _sha(tmp / "simulated.rknn") == _sha(pkg / "model.rknn")


def _simulate(log: Path, request: sideenv.Build) -> tuple[sideenv.Worker, dict[str, Any]]:
    """A new worker that has built ``request`` and keeps the model in its simulator, and the build's reply (the
    worker is closed if the build fails)."""
    worker = sideenv.Worker(log)
    try:
        return worker, worker.call(request)
    except BaseException:
        worker.close()
        raise


class RknnSimRuntime:
    """The simulated NPU model plus the CPU tail: ``predict`` gives the raw head output every format gives."""

    def __init__(self, artifact: Artifact, threads: int) -> None:
        import onnxruntime as ort

        pkg = Path(artifact.path).resolve()  # model.rknn, tail.onnx, build.json; the build's inputs beside it
        build = json.loads((pkg / "build.json").read_text())
        self._tmp = tempfile.TemporaryDirectory(prefix="yoloq-rknn-")
        tmp = Path(self._tmp.name)
        self.worker, same = simulating(pkg, tmp)
        self.tail = None
        if build.get("tail"):
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.log_severity_level = 3
            self.tail = ort.InferenceSession(str(pkg / build["tail"]), so, providers=["CPUExecutionProvider"])
        self.cut = build.get("cut") or []
        self._in, self._out = tmp / "x.npy", tmp / "y.npz"
        platform = build["config"]["target_platform"]
        self.info: dict[str, Any] = {
            "precision_ran": f"{artifact.precision} (RKNN simulator, {platform})", "simulator": True,
            "target_platform": platform, "simulated_file_matches": same,
            "head_on_cpu": "float decode in ONNX Runtime" if self.tail is not None else "none"}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        outs = []
        for x in to_pixels(batch):
            np.save(self._in, x[None])
            self.worker.call(sideenv.Infer(str(self._in), str(self._out)))
            with np.load(self._out) as z:
                ys = [z[f"arr_{i}"] for i in range(len(z.files))]
            if self.tail is not None:
                ys = self.tail.run(None, dict(zip(self.cut, ys)))
            outs.append(ys[0])
        return np.concatenate(outs)

    def close(self) -> None:
        self.worker.close()
        self._tmp.cleanup()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - best effort
            pass


class RknnBoardRuntime:
    """On a Rockchip board (rknn-toolkit-lite2 installed): the exported ``model.rknn`` on the real NPU, the tail on
    its CPU, no rebuild. This is what a Ray node on a board times."""

    def __init__(self, artifact: Artifact, threads: int) -> None:
        import onnxruntime as ort
        from rknnlite.api import RKNNLite

        pkg = Path(artifact.path).resolve()
        build = json.loads((pkg / "build.json").read_text())
        self.npu = RKNNLite()
        if self.npu.load_rknn(str(pkg / "model.rknn")) != 0 or self.npu.init_runtime() != 0:
            raise ExportError(f"rknn-toolkit-lite2 could not load {pkg / 'model.rknn'} on this device")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.tail = ort.InferenceSession(str(pkg / build["tail"]), so, providers=["CPUExecutionProvider"]) \
            if build.get("tail") else None
        self.cut = build.get("cut") or []
        self.info: dict[str, Any] = {"precision_ran": f"{artifact.precision} (RKNN NPU)", "simulator": False,
                                     "target_platform": build["config"]["target_platform"]}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        outs = []
        for x in to_pixels(batch):
            ys = self.npu.inference(inputs=[x[None]], data_format=["nchw"])
            outs.append(self.tail.run(None, dict(zip(self.cut, ys)))[0] if self.tail is not None
                        else np.asarray(ys[0], np.float32))
        return np.concatenate(outs)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@register
class RknnBackend(Backend):
    """Rockchip NPUs through rknn-toolkit2 (its own environment), scored by its simulator."""

    name = "rknn"
    precisions = ("fp16", "int8")
    install_hint = f"run '{sideenv.SETUP}' (rknn-toolkit2 in its own environment)"
    libraries = ("rknn-toolkit2",)
    style = Style(color="#8c564b")
    timed_here = ON_BOARD  # the simulator is no measure of speed; a board's NPU is
    supports_sensitivity = True
    options = {
        "target_platform": OptionSpec(str, "rk3588", PLATFORMS, "the Rockchip chip the model is built for"),
        "quantized_algorithm": OptionSpec(str, "normal", ("normal", "mmse", "kl_divergence"),
                                          "the toolkit's range algorithm", ("int8",)),
        "quantized_method": OptionSpec(str, "channel", ("channel", "layer"), "weight scales per channel or per layer",
                                       ("int8",)),
        "keep_head_float": OptionSpec(str, "decode", ("decode", "outputs", "none"),
                                      "the head on the CPU in float: decoding / output convs too / nothing"),
        "auto_hybrid": OptionSpec(bool, False, None, "the toolkit keeps in float16 the layers whose INT8 output "
                                  "strays from float (hybrid quantization)", ("int8",)),
        "auto_hybrid_cos_thresh": OptionSpec(float, 0.98, None, "auto_hybrid: the cosine below which a layer stays "
                                             "float16", ("int8",), minimum=0.0),
        "float_blocks": OptionSpec(list, None, None, "blocks kept in float16 on the NPU (e.g. [model.10], the "
                                   "attention): the toolkit's hybrid quantization", ("int8",)),
        "calibration_images": CALIBRATION_IMAGES,
    }
    _version: str | None = None

    def version(self) -> str:
        if ON_BOARD:
            from importlib.metadata import version

            return f"lite2 {version('rknn-toolkit-lite2')}"
        if RknnBackend._version is None:
            py = sideenv.python()
            with tempfile.TemporaryDirectory() as tmp, sideenv.Worker(Path(tmp) / "log", py) as w:
                try:
                    RknnBackend._version = w.call({"op": "version"})["version"]
                except ExportError as e:
                    raise BackendUnavailable(f"the RKNN environment is broken ({e}); run '{sideenv.SETUP}' "
                                             f"again after removing {sideenv.env_dir()}") from None
        return RknnBackend._version

    @classmethod
    def key_extra(cls) -> dict[str, str]:
        """The side environment's pins (their hash): another toolkit build makes other files."""
        return {"rknn_pins": sideenv.pins_digest()}

    def setup(self) -> Path:
        """The toolkit's own environment, from the pinned requirements (about 6 GB, a few minutes the first time)."""
        from yoloq.progress import say

        if not sideenv.is_ready():
            say(f"setting up rknn-toolkit2's own environment in {sideenv.env_dir()} (pinned: "
                f"yoloq/backends/rknn/requirements.txt; about 6 GB, a few minutes)")
        return sideenv.setup()

    def untimed_reason(self) -> str:
        return ("not timed here: the RKNN simulator is no measure of speed; name a Ray target whose node is a "
                "Rockchip board (rknn-toolkit-lite2) to time it there")

    def export(self, ctx: ExportContext) -> Artifact:
        onnx_path = base_onnx(ctx.source, ctx.imgsz, ctx.workdir.parent, max_det=ctx.max_det)
        work = ctx.workdir.resolve()  # the toolkit reads dataset lines relative to the list's own folder
        work.mkdir(parents=True, exist_ok=True)
        keep = ctx.option("keep_head_float")
        body, tail, cut = split_head(onnx_path, keep, ctx.source, work)
        pkg = work / "model"  # what ships and what a board runs: model.rknn, tail.onnx, build.json
        shutil.rmtree(pkg, ignore_errors=True)
        pkg.mkdir()
        if tail is not None:
            tail = Path(shutil.move(str(tail), str(pkg / "tail.onnx")))
        quantize = ctx.variant.precision == "int8"
        names: list[str] = []
        if quantize:
            cal = work / "calibration"
            shutil.rmtree(cal, ignore_errors=True)
            cal.mkdir()
            for i, x in enumerate(ctx.calibration_images().batches(ctx.imgsz, progress="  calibration images")):
                names.append(f"{i:04d}.npy")
                np.save(cal / names[-1], to_pixels(x))
            (work / "dataset.txt").write_text("".join(f"{cal / n}\n" for n in names))
        config = {"mean_values": [[0, 0, 0]], "std_values": [[255, 255, 255]],
                  "target_platform": ctx.option("target_platform"), "disable_rules": list(DISABLED_RULES)}
        hybrid = quantize and bool(ctx.option("auto_hybrid"))
        pairs = block_ends(body, list(ctx.option("float_blocks") or [])) if quantize else []
        if quantize:
            config |= {"quantized_algorithm": ctx.option("quantized_algorithm"),
                       "quantized_method": ctx.option("quantized_method")}
        if hybrid:
            config["auto_hybrid_cos_thresh"] = ctx.option("auto_hybrid_cos_thresh")
        out = pkg / "model.rknn"
        old = _SIMULATING.pop(str(pkg), None)
        if old is not None:
            old[0].close()
        with step(f"build {ctx.variant.label} with rknn-toolkit2 {self.version()}"):
            w, reply = _simulate(work / "toolkit.log", sideenv.Build(
                str(body), str(out), config, quantize, str(work / "dataset.txt") if quantize else None,
                simulate=True, auto_hybrid=hybrid, hybrid=pairs or None))
        _SIMULATING[str(pkg)] = (w, _sha(out))
        build = {"config": config, "quantize": quantize, "auto_hybrid": hybrid, "hybrid": pairs, "calibration": names,
                 "tail": tail.name if tail else None, "cut": cut}
        (pkg / "build.json").write_text(json.dumps(build, indent=1))
        return Artifact(pkg, self.name, ctx.variant.precision, {
            "quantizer": f"rknn-toolkit2 {self.version()} ({config.get('quantized_algorithm', 'float16')}"
                         f"{', per ' + config['quantized_method'] if quantize else ''})",
            "target_platform": config["target_platform"], "calibration_used": len(names),
            "head_on_cpu": keep if tail else "none", "npu_outputs": cut, "build_seconds": reply.get("seconds"),
            "export_memory": {"peak_mb": round(peak) if (peak := w.peak_mb()) is not None else None,
                              "of": "the toolkit's worker process (its peak resident memory after the build)"},
            "kept_float": ([ctx.source.head.scope.rstrip("/")] if tail else []) +
                          ([f"/{b}" for b in ctx.option("float_blocks")] if pairs else []),
            **({"auto_hybrid": f"layers below cosine {config['auto_hybrid_cos_thresh']} in float16"}
               if hybrid else {}), **({"float16_blocks": list(ctx.option("float_blocks"))} if pairs else {})})

    def in_int8(self, ctx: ExportContext, groups: list[GroupError]) -> list[GroupError]:
        """The ranked blocks not already kept in float16 by the variant's ``float_blocks`` (the toolkit's analysis
        ranks every layer, those it runs in float16 included)."""
        kept = set(ctx.option("float_blocks") or [])
        return [g for g in groups if g.group not in kept]

    def keep_float(self, groups: list[GroupError]) -> dict[str, Any]:
        """The ranked blocks as ``float_blocks`` (float16 on the NPU, by the toolkit's hybrid quantization)."""
        return {"float_blocks": [g.group for g in groups]}

    def deployable(self, ctx: ExportContext) -> Artifact:
        """What a board runs: the export's folder, ``model.rknn`` (the NPU's part) and ``tail.onnx`` (the decoding,
        float, on its CPU)."""
        return self.export(ctx)

    def deploy_notes(self, model_file: str) -> tuple[dict[str, Any], list[str]]:
        return {}, [f"`{model_file}/model.rknn` runs on the NPU of the Rockchip chip it was built for "
                    "(`export.json`: target_platform), `tail.onnx` decodes its six outputs on the board's CPU in "
                    "float. On the board: rknn-toolkit-lite2 and ONNX Runtime (aarch64 wheels), and Rockchip's "
                    "librknnrt.so in /usr/lib.",
                    "", "yoloq measured its accuracy with rknn-toolkit2's simulator on the host; its speed is the "
                    "board's to measure (the predict script below, or a Ray node on the board)."]

    def sensitivity(self, ctx: ExportContext, granularity: str, images: int) -> list[GroupError]:
        """Rank blocks (or conv layers) by the toolkit's own accuracy analysis of the simulated INT8 model on
        ``images`` calibration images (never evaluation ones): each layer's error alone, the worst per block."""
        pkg = Path(self.export(ctx).path).resolve()
        build = json.loads((pkg / "build.json").read_text())
        per_image = []
        with tempfile.TemporaryDirectory(prefix="yoloq-rknn-") as tmp:
            w, _ = simulating(pkg, Path(tmp))
            with w:
                for n in build["calibration"][:images]:
                    dest = Path(tmp) / n
                    w.call(sideenv.Analyze([str(pkg.parent / "calibration" / n)], str(dest)))
                    per_image.append(layer_errors((dest / "error_analysis.txt").read_text()))
        return group_errors(per_image, granularity)

    def explain(self, artifact: Artifact, batch: Any, threads: int, runs: int = 5) -> list[LayerRun]:
        """The NPU's layers as the toolkit's analysis of the simulated model lists them on ``batch`` (int8, float16
        blocks, conversions; MACs of each convolution), then the CPU tail's ops in float. No times: the simulator
        is no measure of speed."""
        import onnx

        pkg = Path(artifact.path).resolve()
        folder, build = pkg.parent, json.loads((pkg / "build.json").read_text())
        with tempfile.TemporaryDirectory(prefix="yoloq-rknn-") as tmp:
            w, _ = simulating(pkg, Path(tmp))
            with w:
                np.save(Path(tmp) / "x.npy", to_pixels(batch[:1]))
                w.call(sideenv.Analyze([str(Path(tmp) / "x.npy")], str(Path(tmp) / "a")))
                layers = layer_errors((Path(tmp) / "a" / "error_analysis.txt").read_text())
        npu = executed(layers, conv_macs(folder / "body.onnx"), str(artifact.precision),
                       list(artifact.info.get("float16_blocks") or []))
        tail = []
        if build.get("tail"):
            macs = conv_macs(pkg / build["tail"])
            tail = [LayerRun(n.name, f"{n.op_type} (CPU)", "fp32", None, macs.get(n.output[0], 0))
                    for n in onnx.load(str(pkg / build["tail"])).graph.node if n.op_type != "Constant"]
        return npu + tail

    def load(self, artifact: Artifact, threads: int, device: str = "cpu") -> RknnSimRuntime | RknnBoardRuntime:
        rt = RknnBoardRuntime(artifact, threads) if ON_BOARD else RknnSimRuntime(artifact, threads)
        rt.info["toolkit"] = self.version()  # not among yoloq's own versions: it lives in its own environment
        return rt

    def tune_space(self, machine: Mapping[str, Any]) -> list[TuneCandidate]:
        return [TuneCandidate(n, o, w) for n, o, w in (
            ("default", {}, "the toolkit's defaults: normal ranges, per-channel weights, decoding on the CPU"),
            ("hybrid", {"auto_hybrid": True}, "the toolkit keeps the layers it finds worst in float16"),
            ("kl", {"quantized_algorithm": "kl_divergence"}, "ranges by KL divergence (MMSE: over 30 min a build)"),
            ("head-outputs", {"keep_head_float": "outputs"}, "the head's output convolutions on the CPU too"))]
