"""NCNN, Tencent's runtime for phones and Arm boards: FP32 and FP16 through pnnx (Ultralytics' exporter), INT8 written
by yoloq in ncnn's own formats (:mod:`yoloq.backends.ncnn.int8`: ncnn2table's scales, ncnn2int8's weights, nothing
to build), run by ncnn's Python runtime.

The INT8 scope works on module names: pnnx writes the model's convolutions in the order the model runs them, so the
n-th ``Convolution`` of the ncnn graph is the n-th ``Conv2d`` the model runs (checked by shape). The convolutions the
scope keeps in float get no scales and stay float.

Recovery with the FP32 model as the teacher (calibration images only): 8-bit weights for the 3x3 stride-1
convolutions (ncnn2table gives them 6 bits for ncnn's int8 Winograd F(4,3); the file marks them for ncnn's int8 GEMM,
or, with ``int8_3x3_kernel: winograd``, asks ncnn for its F(2,3) kernels in ``ncnn-options.json``), GPTQ rounding on
ncnn's grid, distillation through ncnn's arithmetic (:mod:`yoloq.recover.distill`), inputs centered on their range
before ncnn quantizes them (``centered_inputs``), and blocks ranked by sensitivity in ncnn's runtime for ``yoloq
tune``'s fallback candidates (:mod:`yoloq.backends.ncnn.candidates`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from yoloq.backends.base import (Artifact, Backend, ExportContext, GroupError, LayerRun, OptionSpec, Style,
                                 TuneCandidate)
from yoloq.backends.ncnn import calibration, int8
from yoloq.backends.onnx_base import base_path, head_args, ultralytics_export
from yoloq.backends.registry import register
from yoloq.backends.scope import (CALIBRATION_IMAGES, INT8, KEEP_HEAD_FLOAT, distill_as_configured, distill_budget,
                                  distill_options, keep_stem_float)
from yoloq.backends.torch_scope import conv_order, export_module, in_float, module_scope, within
from yoloq.errors import BackendUnavailable, ExportError
from yoloq.progress import step
from yoloq.recover.cost import measured

PARAM, BIN = int8.PARAM, int8.BIN
CONVS = int8.CONVS
GPTQ_IMAGES = 32  # calibration images whose convolution inputs make GPTQ's second moments


def read_param(path: Path) -> list[tuple[str, str, list[str], list[str], dict[str, str]]]:
    """An ncnn ``.param`` file's layers: (type, name, bottom blobs, top blobs, params ``key=value``)."""
    return [(x.kind, x.name, x.bottoms, x.tops, x.params) for x in int8.layers_of(Path(path))]


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
        for k, v in int8.runtime_options(folder).items():  # e.g. no Winograd F(4,3) for 8-bit 3x3 weights
            setattr(opt, k, v)
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
        "method": OptionSpec(str, "kl", int8.METHODS, "activation calibration, as ncnn2table computes it: KL "
                             "divergence, ACIQ (which clips the weights too), or max (each activation's largest "
                             "magnitude over the calibration images: no clipping)", INT8),
        "input_range": OptionSpec(bool, True, None, "the convolutions reading the image get its known range [0, 1] "
                                  "(scale 127) instead of a calibrated clip", INT8),
        "weight_bits_3x3": OptionSpec(int, 6, (6, 8), "weight bits of the 3x3 stride-1 convolutions: 6 as "
                                      "ncnn2table gives them (ncnn's int8 Winograd F(4,3) needs them), or 8 (the "
                                      "model then asks ncnn for its F(2,3) kernels)", INT8),
        "weight_rounding": OptionSpec(str, "nearest", ("nearest", "gptq", "distill"), "int8 weights rounded to "
                                      "nearest (ncnn2int8), by GPTQ on ncnn's grid against the FP32 layer's inputs, "
                                      "or learned by distillation from the FP32 model through ncnn's arithmetic "
                                      "(fake quantizers) on calibration images", INT8),
        "distill_scales": OptionSpec(bool, False, None, "distillation learns each quantized convolution's int8 "
                                     "input scale too, as LSQ does (it may learn to clip), else keeps the "
                                     "calibrated one", INT8, before=False),
        "int8_3x3_kernel": OptionSpec(str, "gemm", ("gemm", "winograd"), "how ncnn runs the 3x3 stride-1 "
                                      "convolutions with 8-bit weights (weight_bits_3x3: 8): its int8 GEMM, marked "
                                      "in the file (the same integers, exactly; faster than Winograd F(2,3) on a "
                                      "VNNI CPU), or its Winograd F(2,3), asked for beside the file", INT8,
                                      before="winograd"),
        **distill_options("ncnn's arithmetic", new=False),
        "centered_inputs": OptionSpec(bool, False, None, "each quantized convolution's one-sided input (not "
                                      "the image) is shifted by its calibrated range's midpoint before ncnn "
                                      "quantizes it (an added scalar and explicit padding, undone in the bias: exact "
                                      "in float), so a SiLU's output spends all 255 int8 levels instead of 128 "
                                      "(method: max)", INT8, before=False),
        "float_modules": OptionSpec(list, [], None, "module names (and everything inside them) kept in float "
                                    "besides the scope, e.g. the blocks yoloq sensitivity ranks worst", INT8),
    }
    supports_sensitivity = True

    def version(self) -> str:
        from importlib.util import find_spec

        for pkg in ("ncnn", "pnnx"):
            if find_spec(pkg) is None:
                raise BackendUnavailable(f"{pkg} is not installed ({self.install_hint})")
        from importlib.metadata import version

        return version("ncnn")

    def tune_space(self, machine: Mapping[str, Any]) -> list[TuneCandidate]:
        """Activation calibration, the head's scope, the stem in float, and recovery on ncnn's grid
        (:mod:`yoloq.backends.ncnn.candidates`)."""
        from yoloq.backends.ncnn.candidates import CANDIDATES

        return [TuneCandidate(n, o, w) for n, o, w in CANDIDATES]

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
        with step(f"quantize {ctx.variant.label} (ncnn's scales and int8 weights, written by yoloq)"):
            out, scope = self._int8(ctx, folder, head.end2end)
        return Artifact(out, self.name, "int8", info | scope | {
            "quantizer": f"yoloq's ncnn int8 writer (activations {ctx.option('method')}, per-channel int8 weights "
                         f"rounded {ctx.option('weight_rounding')}, 3x3 stride-1 weights "
                         f"{ctx.option('weight_bits_3x3')}-bit), per-tensor int8 activations",
            "settings": dict(ctx.variant.options)})

    def _plan(self, ctx: ExportContext, fp32: Path, end2end: bool
              ) -> tuple[int8.Model, dict[str, str], list[int8.Layer], list[str]]:
        """The FP32 model, its convolutions' module names, those the scope quantizes, and those kept in float."""
        model = int8.read(fp32)
        torch_model = export_module(ctx.source, ctx.imgsz, end2end, ctx.max_det, "ncnn")
        floats, quantized = module_scope(torch_model, ctx.option("keep_head_float"), ctx.option("keep_stem_float"))
        names = conv_names(torch_model, fp32 / PARAM, ctx.imgsz)
        extra = set(ctx.option("float_modules") or [])
        unknown = sorted(m for m in extra if not any(within(n, {m}) for n in names.values()))
        if unknown:  # a misspelt block would otherwise leave everything in int8 without a word
            raise ExportError(f"float_modules {unknown[0]!r} names no convolution of the model; give module names "
                              f"such as model.10 or model.23.cv2.0 (yoloq sensitivity lists the blocks)")
        kept = [n for n, m in names.items() if in_float(m, set(floats), set(quantized)) or within(m, extra)]
        return model, names, [c for c in model.convs if c.name not in kept], kept

    def _quant(self, ctx: ExportContext, fp32: Path, model: int8.Model, layers: list[int8.Layer],
               images: list[np.ndarray], cost: dict[str, Any]) -> dict[str, Any]:
        """Each quantized convolution's (weight scales, input scale, int8 weights or None)."""
        method, bits = ctx.option("method"), ctx.option("weight_bits_3x3")
        centered = ctx.option("centered_inputs")
        if centered and method != "max":
            raise ExportError(f"ncnn option centered_inputs centers each input's whole range: it needs method: max "
                              f"(got method: {method})")
        with measured(cost, "calibrate"):
            st = calibration.statistics(fp32, model, images, ctx.threads, cache=fp32.parent / "ncnn-stats")
            acts = calibration.scales(st, model, method, layers)
            mids = {n: 0.0 for n in acts}
            if centered:
                found = calibration.centers(st, model, layers)
                mids, acts = {n: m for n, (m, _) in found.items()}, {n: a for n, (_, a) in found.items()}
        if ctx.option("input_range"):
            for c in layers:
                if model.input in c.bottoms:
                    acts[c.name] = 127.0  # pixels / 255: the image's known range [0, 1]
        ws = {c.name: int8.weight_scales(c, method, bits) for c in layers}
        ints: dict[str, np.ndarray] = {}
        if ctx.option("weight_rounding") == "gptq":
            from yoloq.backends.ncnn.recovery import gptq

            with measured(cost, "gptq"), step(f"GPTQ rounding on ncnn's grid ({min(len(images), GPTQ_IMAGES)} "
                                                 f"calibration images)"):
                ints = gptq(fp32, model, layers, ws, bits, images[:GPTQ_IMAGES], ctx.threads)
        biases: dict[str, np.ndarray] = {}
        if ctx.option("weight_rounding") == "distill":
            with measured(cost, "distill"), step(f"distillation from the FP32 model through ncnn's arithmetic "
                                                    f"({distill_budget(ctx)}, {len(images)} "
                                                    f"calibration images)"):
                ints, biases, learned, cost["distill_result"] = self._distill(ctx, fp32, layers, ws, acts, images,
                                                                              mids)
            acts = {**acts, **learned}  # the input scales distillation learned (distill_scales), else the same
        return {c.name: (ws[c.name], acts[c.name], ints.get(c.name), biases.get(c.name), mids[c.name])
                for c in layers}

    def _distill(self, ctx: ExportContext, fp32: Path, layers: list[int8.Layer], ws: dict[str, np.ndarray],
                 acts: dict[str, float], images: list[np.ndarray], mids: dict[str, float]
                 ) -> tuple[dict, dict, dict, dict[str, Any]]:
        """Weights, biases and input scales learned by :func:`yoloq.recover.distill.distill`, as ncnn's integers,
        float biases and input scales (by ncnn layer name)."""
        from yoloq.backends.ncnn.recovery import learned_integers
        from yoloq.recover.distill import Grid

        model = export_module(ctx.source, ctx.imgsz, False, ctx.max_det, "ncnn")
        names = conv_names(model, fp32 / PARAM, ctx.imgsz)
        bits = ctx.option("weight_bits_3x3")
        grids = {names[c.name]: Grid(ws[c.name], int8.qmax(c, bits), acts[c.name], mids[c.name]) for c in layers}
        learned, result = distill_as_configured(ctx, model, grids, images, learn_steps=ctx.option("distill_scales"))
        scales = {c.name: learned[names[c.name]][2] for c in layers}
        return (*learned_integers(layers, learned, names, ws, bits), scales, result)

    def _images(self, ctx: ExportContext) -> list[np.ndarray]:
        images = list(ctx.calibration_images().batches(ctx.imgsz, progress="  reading calibration images"))
        if not images:
            raise ExportError("no calibration image could be read")
        return images

    def _int8(self, ctx: ExportContext, fp32: Path, end2end: bool) -> tuple[Path, dict[str, Any]]:
        model, names, layers, kept = self._plan(ctx, fp32, end2end)
        images = self._images(ctx)
        cost: dict[str, Any] = {}
        quant = self._quant(ctx, fp32, model, layers, images, cost)
        eight = [c.name for c in layers if c.winograd43] if ctx.option("weight_bits_3x3") == 8 else []
        gemm = frozenset(eight) if ctx.option("int8_3x3_kernel") == "gemm" else frozenset()
        out = ctx.workdir / "model"
        sizes = int8.write(model, out, quant, gemm=gemm,
                           options={"use_winograd43_convolution": False} if eight and not gemm else None)
        return out, {"calibration_used": len(images), "kept_float": sorted(names[n] for n in kept),
                     "int8_layers": len(layers), "recovery_cost": cost, **sizes,
                     "gemm_layers": len(gemm),  # 8-bit 3x3 convolutions marked to run ncnn's int8 GEMM
                     "runtime_options": int8.runtime_options(out)}

    def sensitivity(self, ctx: ExportContext, granularity: str, images: int) -> list[GroupError]:
        """Rank blocks by the output SQNR when each alone is int8 (the variant's scales, rounding and weight bits),
        in ncnn's runtime against the FP32 model, on ``images`` calibration images."""
        from yoloq.backends.ncnn.recovery import rank_blocks

        tag, args = head_args(ctx.source, ctx.max_det, False)
        fp32 = base_path(ctx.source, ctx.imgsz, ctx.workdir.parent, f"{tag}ncnn-fp32-pnnx{_pnnx()}")
        if not (fp32 / PARAM).is_file():
            ultralytics_export(ctx.source, fp32, format="ncnn", imgsz=ctx.imgsz, batch=1, half=False, **args)
        model, names, layers, _ = self._plan(ctx, fp32, False)
        quant = self._quant(ctx, fp32, model, layers, self._images(ctx), {})
        batches = list(ctx.calibration.batches(ctx.imgsz, images))
        return rank_blocks(fp32, model, quant, names, batches, ctx.imgsz, ctx.threads)

    def in_int8(self, ctx: ExportContext, groups: list[GroupError]) -> list[GroupError]:
        """All ranked blocks are int8 under the variant's scope (the ranking quantizes only those)."""
        return list(groups)

    def keep_float(self, groups: list[GroupError]) -> dict[str, Any]:
        """The blocks kept in float by module name."""
        return {"float_modules": [g.group for g in groups]}

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
