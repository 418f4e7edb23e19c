"""NCNN, Tencent's runtime for phones and Arm boards: FP32 and FP16 through pnnx (Ultralytics' exporter), INT8 through
ncnn's own tools (a calibration table from yoloq's calibration images, then int8 weights), run by ncnn's Python
runtime.

The INT8 scope works on module names: pnnx writes the model's convolutions in the order the model runs them, so the
n-th ``Convolution`` of the ncnn graph is the n-th ``Conv2d`` the model runs (checked by shape). The table leaves out
the convolutions the scope keeps in float; ``ncnn2int8`` quantizes only those it lists.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from yoloq.backends.base import Artifact, Backend, ExportContext, LayerRun, OptionSpec, Style, TuneCandidate
from yoloq.backends.ncnn import tools
from yoloq.backends.onnx_base import base_path, head_args, ultralytics_export
from yoloq.backends.registry import register
from yoloq.backends.scope import CALIBRATION_IMAGES, INT8, KEEP_HEAD_FLOAT, keep_stem_float
from yoloq.backends.torch_scope import conv_order, export_module, in_float, module_scope
from yoloq.errors import BackendUnavailable, ExportError
from yoloq.progress import step

PARAM, BIN = "model.ncnn.param", "model.ncnn.bin"
CONVS = ("Convolution", "ConvolutionDepthWise")
TOOL_TIMEOUT_S = 1800


def read_param(path: Path) -> list[tuple[str, str, list[str], list[str], dict[str, str]]]:
    """An ncnn ``.param`` file's layers: (type, name, bottom blobs, top blobs, params ``key=value``)."""
    lines = Path(path).read_text().split("\n")
    layers = []
    for line in lines[2:]:
        f = line.split()
        if len(f) < 4:
            continue
        nb, nt = int(f[2]), int(f[3])
        blobs = f[4:4 + nb + nt]
        params = dict(kv.split("=", 1) for kv in f[4 + nb + nt:] if "=" in kv)
        layers.append((f[0], f[1], blobs[:nb], blobs[nb:], params))
    return layers


class NcnnRuntime:
    """An ncnn model on the CPU: fp16 storage only for the FP16 variant, int8 layers where the model has them."""

    def __init__(self, folder: Path, precision: str, threads: int) -> None:
        import ncnn

        layers = read_param(folder / PARAM)
        self.input = next(tops[0] for kind, _, _, tops, _ in layers if kind == "Input")
        self.output = layers[-1][3][0]
        net = ncnn.Net()
        opt = net.opt
        opt.num_threads = threads
        opt.use_vulkan_compute = False
        half = precision == "fp16"
        opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = half
        opt.use_bf16_storage = False
        opt.use_int8_inference = precision == "int8"
        if net.load_param(str(folder / PARAM)) != 0 or net.load_model(str(folder / BIN)) != 0:
            raise ExportError(f"ncnn could not load {folder / PARAM}")
        self._ncnn, self.net = ncnn, net
        self.info: dict[str, Any] = {"threads": threads}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """The raw head output ``[B, 4 + nc, N]``, one image at a time (an ncnn blob has no batch axis)."""
        outs = []
        for x in np.asarray(batch, np.float32):
            ex = self.net.create_extractor()
            ex.input(self.input, self._ncnn.Mat(np.ascontiguousarray(x)))
            ret, y = ex.extract(self.output)
            if ret != 0:
                raise RuntimeError(f"ncnn could not compute {self.output} ({ret})")
            outs.append(np.array(y, np.float32))
        return np.stack(outs)


def conv_names(model: Any, param: Path, imgsz: int) -> dict[str, str]:
    """ncnn convolution layer name -> the model's module name, matched in run order and checked by shape.

    Raises:
        ExportError: When the two do not line up (a graph pnnx rewrote): the scope cannot be placed.
    """
    convs = [(kind, name, p) for kind, name, _, _, p in read_param(param) if kind in CONVS]
    order = conv_order(model, imgsz)
    if len(convs) != len(order):
        raise ExportError(f"ncnn's graph has {len(convs)} convolutions, the model runs {len(order)}: the INT8 scope "
                          f"cannot be placed by module name")
    names = {}
    for (kind, name, p), (module, out_ch, k, groups) in zip(convs, order):
        depthwise = kind == "ConvolutionDepthWise"
        if int(p.get("0", -1)) != out_ch or int(p.get("1", -1)) != k or depthwise != (groups > 1):
            raise ExportError(f"ncnn layer {name} ({kind}, {p.get('0')} out, kernel {p.get('1')}) is not {module} "
                              f"({out_ch} out, kernel {k}): the INT8 scope cannot be placed by module name")
        names[name] = module
    return names


def _activation_scales(table: list[str], param: Path, log: str, method: str, input_range: bool) -> list[str]:
    """The table's lines with the activation scales ``method`` and ``input_range`` ask for: ``max`` sets each
    activation's scale to 127 over its largest magnitude (ncnn2table prints it: ``<layer> : max = ...``);
    ``input_range`` gives the convolutions that read the image (pixels / 255) the scale of [0, 1], 127."""
    absmax = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+)\s+: max = (\S+)\s+threshold", log, re.M)}
    layers = read_param(param)
    image = next(tops[0] for kind, _, _, tops, _ in layers if kind == "Input")
    reads_image = {name for kind, name, bottoms, _, _ in layers if kind in CONVS and image in bottoms}
    out = []
    for line in table:
        name = line.split(" ", 1)[0]
        if name.endswith("_param_0"):
            out.append(line)
        elif input_range and name in reads_image:
            out.append(f"{name} 127.0")
        elif method == "max":
            if absmax.get(name, 0.0) <= 0:
                raise ExportError(f"ncnn2table printed no maximum for {name}: the max method cannot set its scale")
            out.append(f"{name} {127.0 / absmax[name]:f}")
        else:
            out.append(line)
    return out


def _run(cmd: list[str], log: Path, what: str) -> None:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=TOOL_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            raise ExportError(f"{what} took over {TOOL_TIMEOUT_S} s (log: {log})") from None
    if rc != 0:
        raise ExportError(f"{what} failed ({rc}); see {log}")


@register
class NcnnBackend(Backend):
    """ncnn on the CPU (x86 here: a proxy for the Arm boards it is made for)."""

    name = "ncnn"
    precisions = ("fp32", "fp16", "int8")
    sources = ("pt",)
    install_hint = "pip install ncnn pnnx"
    libraries = ("ncnn", "pnnx")
    style = Style(color="#e377c2")
    options = {
        "calibration_images": CALIBRATION_IMAGES,
        "keep_head_float": KEEP_HEAD_FLOAT,
        "keep_stem_float": keep_stem_float(0),
        "method": OptionSpec(str, "kl", ("kl", "aciq", "eq", "max"), "ncnn2table's activation calibration: KL "
                             "divergence, ACIQ, equalization, or max (each activation's largest magnitude over the "
                             "calibration images, from ncnn2table's own statistics: no clipping)", INT8),
        "input_range": OptionSpec(bool, True, None, "the convolutions reading the image get its known range [0, 1] "
                                  "(scale 127) instead of a calibrated clip", INT8),
    }

    def version(self) -> str:
        from importlib.util import find_spec

        for pkg in ("ncnn", "pnnx"):
            if find_spec(pkg) is None:
                raise BackendUnavailable(f"{pkg} is not installed ({self.install_hint})")
        return tools.ncnn_version()

    def check(self, variant: Any, source: Any) -> None:
        super().check(variant, source)
        if variant.precision == "int8":
            tools.find()

    def setup(self) -> Path:
        """ncnn2table and ncnn2int8 built from ncnn's source (the version of the installed wheel)."""
        from yoloq.progress import say

        try:
            return tools.find()
        except BackendUnavailable:
            say(f"building ncnn's INT8 tools into {tools.tools_dir()} (cmake, about a minute)")
            return tools.setup()

    def tune_space(self, machine: Mapping[str, Any]) -> list[TuneCandidate]:
        """ncnn2table's calibration method, the head's scope, the stem in float."""
        return [TuneCandidate(n, o, w) for n, o, w in (
            ("default", {}, "ncnn2table's KL calibration with yoloq's head scope, the image's known range"),
            ("aciq", {"method": "aciq"}, "ACIQ clipping instead of KL"),
            ("max", {"method": "max"}, "each activation's largest magnitude: no clipping"),
            ("eq", {"method": "eq"}, "ncnn2table's equalization search"),
            ("input-calibrated", {"input_range": False}, "the image's range calibrated too (KL clips pixels)"),
            ("head-decode", {"keep_head_float": "decode"}, "the head's output convolutions in int8 too"),
            ("stem2", {"keep_stem_float": 2}, "the first two layers in float"),
            ("stem2-max", {"keep_stem_float": 2, "method": "max"}, "the first two layers in float, no clipping"))]

    def export(self, ctx: ExportContext) -> Artifact:
        head = ctx.source.head
        if head.end2end:  # as Ultralytics' exporter: its ncnn export of the one-to-one branch is not kept
            head = replace(head, end2end=False, reason="NCNN carries no top-k here (Ultralytics' exporter exports "
                                                       "the one-to-many branch for ncnn): one-to-many branch + NMS")
        tag, args = head_args(ctx.source, ctx.max_det, head.end2end)
        info: dict[str, Any] = {"head": head.describe()}
        fp = "fp16" if ctx.variant.precision == "fp16" else "fp32"
        folder = base_path(ctx.source, ctx.imgsz, ctx.workdir.parent, f"{tag}ncnn-{fp}-pnnx{_pnnx()}")
        if not (folder / PARAM).is_file():
            ultralytics_export(ctx.source, folder, format="ncnn", imgsz=ctx.imgsz, batch=1, half=fp == "fp16",
                               **args)
        if ctx.variant.precision != "int8":
            return Artifact(folder, self.name, fp, info | {"converter": f"pnnx {_pnnx()}"})
        with step(f"quantize {ctx.variant.label} (ncnn2table, ncnn2int8)"):
            out, scope = self._int8(ctx, folder, head.end2end)
        return Artifact(out, self.name, "int8", info | scope | {
            "quantizer": f"ncnn2table (method {ctx.option('method')}) + ncnn2int8, per-channel int8 weights, "
                         f"per-tensor int8 activations", "tools": tools.source_note(),
            "settings": dict(ctx.variant.options)})

    def _int8(self, ctx: ExportContext, fp32: Path, end2end: bool) -> tuple[Path, dict[str, Any]]:
        bin_dir = tools.find()
        work = ctx.workdir
        cal = work / "calibration"
        cal.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, x in enumerate(ctx.calibration_images().batches(ctx.imgsz, progress="  writing calibration inputs")):
            p = cal / f"{i:05d}.npy"
            np.save(p, np.ascontiguousarray(x[0], np.float32))  # CHW, as ncnn2table reads an npy input
            paths.append(str(p))
        if not paths:
            raise ExportError("no calibration image could be read")
        (work / "calibration.txt").write_text("\n".join(paths) + "\n")
        log = work / "ncnn-tools.log"
        table = work / "model.table"
        s, method = ctx.imgsz, ctx.option("method")
        log.unlink(missing_ok=True)
        _run([str(bin_dir / "ncnn2table"), str(fp32 / PARAM), str(fp32 / BIN), str(work / "calibration.txt"),
              str(table), "mean=[0,0,0]", "norm=[1,1,1]", f"shape=[{s},{s},3]", "pixel=RGB",
              f"thread={ctx.threads}", f"method={'kl' if method == 'max' else method}", "type=1"], log, "ncnn2table")
        lines = _activation_scales(table.read_text().splitlines(), fp32 / PARAM, log.read_text(), method,
                                   ctx.option("input_range"))
        model = export_module(ctx.source, s, end2end, ctx.max_det, "ncnn")
        floats, quantized = module_scope(model, ctx.option("keep_head_float"), ctx.option("keep_stem_float"))
        names = conv_names(model, fp32 / PARAM, s)
        kept = {n for n, m in names.items() if in_float(m, set(floats), set(quantized))}
        scoped = [x for x in lines if x.split(" ", 1)[0].removesuffix("_param_0") not in kept]
        (work / "model.scoped.table").write_text("\n".join(scoped) + "\n")
        out = work / "model"
        out.mkdir(exist_ok=True)
        _run([str(bin_dir / "ncnn2int8"), str(fp32 / PARAM), str(fp32 / BIN), str(out / PARAM), str(out / BIN),
              str(work / "model.scoped.table")], log, "ncnn2int8")
        for p in cal.glob("*.npy"):
            p.unlink()
        return out, {"calibration_used": len(paths), "kept_float": sorted(names[n] for n in kept),
                     "int8_layers": len(names) - len(kept)}

    def load(self, artifact: Artifact, threads: int, device: str = "cpu") -> NcnnRuntime:
        rt = NcnnRuntime(Path(artifact.path), artifact.precision, threads)
        rt.info["precision_ran"] = {
            "fp32": "fp32", "fp16": "fp16 storage, fp32 arithmetic (x86; Armv8.2 computes in fp16)",
            "int8": "int8 convolutions (symmetric int8 activations), the rest fp32"}[artifact.precision]
        return rt

    def explain(self, artifact: Artifact, batch: np.ndarray, threads: int, runs: int = 5) -> list[LayerRun]:
        """The layers of the ncnn graph with the precision each runs in (ncnn's Python runtime has no per-layer
        timer: times are None)."""
        out = []
        for kind, name, _, _, p in read_param(Path(artifact.path) / PARAM):
            if kind in ("Input", "Split"):
                continue
            if kind in CONVS + ("InnerProduct",):
                prec = "int8" if p.get("8", "0") != "0" else ("fp16" if artifact.precision == "fp16" else "fp32")
            else:
                prec = "fp16" if artifact.precision == "fp16" else "fp32"
            out.append(LayerRun(name, kind, prec))
        return out


def _pnnx() -> str:
    from importlib.metadata import version

    return version("pnnx")
