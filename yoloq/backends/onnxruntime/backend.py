"""The ONNX Runtime format: FP32 and FP16 graphs, INT8 by static calibrated quantization."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from yoloq.backends.base import (
    Artifact,
    Backend,
    ExportContext,
    GroupError,
    LayerRun,
    OptionSpec,
    Style,
    TuneCandidate,
    lacks_vnni,
)
from yoloq.backends.onnx_base import base_onnx
from yoloq.backends.onnxruntime.graph import fp16_onnx, ort_graph
from yoloq.backends.onnxruntime.runtime import OrtRuntime
from yoloq.backends.registry import register
from yoloq.backends.scope import (
    CALIBRATION_IMAGES,
    CONTROL_OPTIONS,
    INT8,
    PREQUANTIZED,
    SCOPE_OPTIONS,
    distill_as_configured,
    distill_budget,
    distill_options,
    float_scope,
    keep_stem_float,
    stem_missing,
)
from yoloq.errors import BackendUnavailable, ExportError, YoloqError
from yoloq.progress import say, step


# distillation on ONNX Runtime's grid: a step budget (the same file on any day on one CPU), augmented images, a rate
# half NCNN's decayed along a cosine. Chosen by the SQNR against FP32 of ONNX Runtime's own output on 12 tuning images
# (YOLO11n at 640, amd-epyc-2c-792874, ad hoc runs): 34.7 dB rounded to nearest, 36.1 dB with these settings, 35.6 dB
# at NCNN's rate held for 150 steps; NCNN's 600 steps at its rate held made the held-out loss worse (nothing kept)
DISTILL = {"weight_rounding": "distill", "distill_steps": 300, "distill_augment": "flip-scale", "distill_lr": 5e-6,
           "distill_schedule": "cosine"}


@register
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on the CPU (and CUDA where onnxruntime-gpu is installed)."""

    name = "onnxruntime"
    precisions = ("fp32", "fp16", "int8")
    devices = ("cpu", "cuda")
    install_hint = "pip install onnxruntime (onnxruntime-gpu for CUDA)"
    libraries = ("onnxruntime",)
    style = Style(color="#1f77b4")
    reads_qdq_onnx = True
    supports_sensitivity = True
    options = {
        # same kernels at run time (ORT fuses QDQ into QLinear ops), but the QOperator file carries no
        # Q/DQ node pairs: YOLO11n 3.16 MB (0.29x FP32) against 3.36 MB (0.31x) for QDQ
        "quant_format": OptionSpec(str, "qoperator", ("qdq", "qoperator"), "INT8 graph form", INT8),
        "per_channel": OptionSpec(bool, True, None, "per-channel weight scales", INT8),
        # percentile (99.999%) kept 100.6% of FP32 mAP50-95 on coco-mini where MinMax kept 97.7% (int8 sweep)
        "calibrate_method": OptionSpec(str, "percentile", ("minmax", "entropy", "percentile"), "activation ranges",
                                       INT8),
        # ONNX Runtime's percentile calibration, its defaults: one threshold t, the 99.999th percentile of |x|,
        # the range [max(-t, min), t]; symmetric_ranges: false cuts (100 - percentile)/2 % off each tail instead
        "percentile": OptionSpec(float, 99.999, None, "percentile of the histogram kept (calibrate_method: "
                                 "percentile)", INT8, minimum=50, maximum=100, before=99.999),
        "symmetric_ranges": OptionSpec(bool, None, None, "ranges symmetric about 0 (unset: ONNX Runtime's choice "
                                       "per method: percentile yes, minmax and entropy no)", INT8, before=None),
        "activation_type": OptionSpec(str, "uint8", ("uint8", "int8"), "activation integer type", INT8),
        # ONNX Runtime's u8s8 kernels on x86 without VNNI (AVX2, AVX-512F) add pairs of products in int16 and can
        # saturate; 7-bit weights avoid it (its quantization docs): yoloq tune makes it the baseline there
        "reduce_range": OptionSpec(bool, False, None, "7-bit weights (no u8s8 saturation on CPUs without VNNI)",
                                   INT8, before=False),
        "calibration_images": CALIBRATION_IMAGES,
        # tensorrt: the exact Q/DQ graph TensorRT's INT8 variant builds, evaluated here on the CPU
        "target": OptionSpec(str, "cpu", ("cpu", "tensorrt"), "INT8 graph form: ONNX Runtime's own, or TensorRT's",
                             INT8),
        **SCOPE_OPTIONS,
        # 3 layers: chosen on held-out train images (configs/int8-holdout-*.yaml), then confirmed by yoloq tune on
        # coco1k's 500 tuning images (results/default-tune/amd-epyc-2c-792874): 99.7% of torch FP32, agreement
        # 0.954; the stem in int8 (stem0) agreed least on the first 125 images (0.936) and was pruned
        "keep_stem_float": keep_stem_float(3),
        **CONTROL_OPTIONS,
        **PREQUANTIZED,
        # INT8 recovery with the FP32 model as the teacher, through the quantized file's own arithmetic
        **distill_options("ONNX Runtime's arithmetic (the file's scales and zero points)", new=True),
    }

    def version(self) -> str:
        try:
            import onnxruntime
        except ImportError:
            raise BackendUnavailable(f"onnxruntime is not installed ({self.install_hint})") from None
        return onnxruntime.__version__

    def check(self, variant, source) -> None:  # noqa: ANN001 - see Backend.check
        super().check(variant, source)
        if variant.device.startswith("cuda"):
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("onnxruntime has no CUDA execution provider here "
                                         "(needs an NVIDIA GPU and pip install onnxruntime-gpu)")

    def tune_space(self, machine: Mapping[str, Any]) -> list[TuneCandidate]:
        """Scope, range and calibration candidates; without VNNI, 7-bit weights in every one (the baseline)."""
        safe = lacks_vnni(machine)
        base = {"reduce_range": True} if safe else {}
        why = "; 7-bit weights, since this CPU has no VNNI and u8s8 kernels can saturate" if safe else ""
        out = [TuneCandidate(n, base | o, w + why) for n, o, w in (
            ("default", {}, "ONNX Runtime's defaults in yoloq"),
            ("stem0", {"keep_stem_float": 0}, "the stem in int8 too (faster, if accuracy holds)"),
            ("stem1", {"keep_stem_float": 1}, "only the first layer in float (faster, if accuracy holds)"),
            ("head-decode", {"keep_head_float": "decode"}, "the head's output convolutions in int8 too"),
            ("p99.99", {"percentile": 99.99}, "tighter activation ranges: finer steps, more clipping"),
            ("minmax", {"calibrate_method": "minmax"}, "full activation ranges: no clipping"),
            ("distill", DISTILL, "int8 weights learned from the FP32 model through ONNX Runtime's int8 arithmetic "
             "(300 steps on mirrored and zoomed calibration images)"),
            ("distill-det", DISTILL | {"distill_loss": "detection"}, "the same, lowering a detector's loss (the class "
             "scores' cross-entropy against the teacher's) instead of the squared error of every output"),
            ("head-decode-distill", DISTILL | {"keep_head_float": "decode"}, "the head's output convolutions in "
             "int8 too, all int8 weights learned from the FP32 model (300 steps)"),
            ("stem1-distill", DISTILL | {"keep_stem_float": 1}, "all but the first layer in int8 (faster), the "
             "int8 weights learned from the FP32 model (300 steps)"),
            ("stem0-distill", DISTILL | {"keep_stem_float": 0}, "the stem in int8 too (faster), the int8 weights "
             "learned from the FP32 model (300 steps)"))]
        if safe:
            out.append(TuneCandidate("8bit-weights", {}, "8-bit weights although this CPU has no VNNI (the "
                                     "saturation-prone form, for evidence)"))
        return out

    def _fp32(self, ctx: ExportContext) -> Path:
        return ort_graph(base_onnx(ctx.source, ctx.imgsz, ctx.workdir.parent, max_det=ctx.max_det),
                         ctx.workdir.parent / "_base")

    def export(self, ctx: ExportContext) -> Artifact:
        if ctx.variant.options.get("prequantized"):
            qat = ort_graph(Path(ctx.option("prequantized")), ctx.workdir)
            return Artifact(qat, self.name, ctx.variant.precision,
                            {"quantizer": "quantization-aware training (Ultralytics + ModelOpt Q/DQ)"})
        fp32 = self._fp32(ctx)
        p = ctx.variant.precision
        if p == "fp32":
            return Artifact(fp32, self.name, p)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        if p == "fp16":
            with step(f"export {ctx.variant.label}"):
                out = fp16_onnx(fp32, ctx.workdir / "model_fp16.onnx")
            return Artifact(out, self.name, p)
        return self.quantize(ctx, fp32)

    def fp32_graph(self, ctx: ExportContext) -> Path:
        """The FP32 ONNX every ONNX Runtime variant (and TensorRT, which reads the same graph) starts from."""
        return self._fp32(ctx)

    def quantize(self, ctx: ExportContext, fp32: Path) -> Artifact:
        """The variant's INT8 ONNX from ``fp32``: calibrated on its images, its scope kept in float.

        With ``target: tensorrt`` it is the Q/DQ form TensorRT builds (TensorRT's INT8 export calls this).
        """
        from yoloq.backends.onnxruntime.quantize import TENSORRT_QDQ, calibrate

        out = ctx.workdir / "model_int8.onnx"
        options = dict(ctx.variant.options)
        if options.get("target") == "tensorrt":
            options |= TENSORRT_QDQ
        exclude = float_scope(fp32, options, ctx.source.head)
        calibration = ctx.calibration_images()
        info: dict[str, Any] = {"quantizer": "onnxruntime.quantization.quantize_static",
                                "settings": options, "calibration_used": len(calibration.images)}
        note = stem_missing(fp32, options.get("keep_stem_float") or 0)
        if note:
            info["stem_float"] = note
            say(f"  {ctx.variant.label}: {note}")
        if options.get("target") == "tensorrt":
            info["graph"] = "the TensorRT INT8 graph (Q/DQ, symmetric int8, bias in float), run here on the CPU"
        prep, cache = ctx.workdir / "model_prep.onnx", ctx.workdir / "ranges.json"  # where calibrate() puts them
        with step(f"quantize {ctx.variant.label}"):
            try:
                prep, cache, robust = calibrate(fp32, ctx.workdir, calibration, ctx.imgsz, options, out, exclude,
                                                share=ctx.workdir.parent / "_ranges")
                if robust:
                    info["calibration_fallback"] = robust
                if ctx.option("accuracy_control"):
                    from yoloq.backends.onnxruntime.control import control

                    exclude, info["accuracy_control"] = control(ctx, prep, out, cache, exclude, options)
                if ctx.option("weight_rounding") == "distill":
                    info["recovery_cost"] = self._distill(ctx, out, options)
            except YoloqError:
                raise
            except Exception as e:  # noqa: BLE001 - the quantizer raises many kinds
                raise ExportError(f"onnxruntime INT8 quantization failed: {type(e).__name__}: {e}") from e
            finally:
                prep.unlink(missing_ok=True)
                cache.unlink(missing_ok=True)
        return Artifact(out, self.name, "int8", info | {"kept_float": exclude})

    def _distill(self, ctx: ExportContext, out: Path, options: Mapping[str, Any]) -> dict[str, Any]:
        """Train the int8 convolutions of ``out`` (the PyTorch model's, through the file's own arithmetic) to match
        the FP32 model on the calibration images, and write what they learned into ``out``; what it cost."""
        import onnx

        from yoloq.backends.onnxruntime.recovery import grids, write
        from yoloq.backends.torch_scope import export_module
        from yoloq.recover.cost import measured

        if ctx.source.kind != "pt" or ctx.source.end2end:
            raise ExportError(f"onnxruntime weight_rounding: distill trains the PyTorch model's raw head output: it "
                              f"needs a .pt model with a one-to-many head (this one: {ctx.source.path.name}"
                              f"{', NMS-free' if ctx.source.end2end else ''}); use weight_rounding: nearest")
        qmax = 64 if options.get("reduce_range") else 127
        found, grid = grids(onnx.load(str(out)), qmax)
        model = export_module(ctx.source, ctx.imgsz, False, ctx.max_det, "onnx")
        unknown = sorted(set(grid) - {n for n, _ in model.named_modules()})
        if unknown:
            raise ExportError(f"onnxruntime distillation: {unknown[0]!r} is not a module of {ctx.source.path.name}")
        images = list(ctx.calibration_images().batches(ctx.imgsz, progress="  reading calibration images"))
        cost: dict[str, Any] = {}
        with measured(cost, "distill"), step(f"distillation from the FP32 model through ONNX Runtime's int8 "
                                             f"arithmetic ({distill_budget(ctx)}, {len(images)} calibration images)"):
            learned, cost["distill_result"] = distill_as_configured(ctx, model, grid, images)
            if cost["distill_result"]["kept"]:  # else the file keeps ONNX Runtime's own rounding
                write(out, found, learned, qmax)
        return cost | {"distilled_layers": len(found)}

    def load(self, artifact: Artifact, threads: int, device: str = "cpu") -> OrtRuntime:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") \
            else ["CPUExecutionProvider"]
        rt = OrtRuntime(artifact.path, threads, providers)
        rt.info["precision_ran"] = artifact.precision
        return rt

    def batched_runtime(self, artifact: Artifact, batch: int, threads: int, device: str = "cpu") -> OrtRuntime:
        """The same graph with a batch of ``batch`` (its reshapes' leading 1 as 0; a temporary file the session
        reads once)."""
        from yoloq.backends.batched import onnx_with_batch

        with tempfile.TemporaryDirectory(prefix="yoloq-batch-") as tmp:
            dst = onnx_with_batch(Path(artifact.path), batch, Path(tmp) / f"batch{batch}.onnx")
            return self.load(replace(artifact, path=dst), threads, device)

    def in_int8(self, ctx: ExportContext, groups: list[GroupError]) -> list[GroupError]:
        """Each group less the nodes the variant's scope (stem, head, float nodes) already keeps in float."""
        kept = set(float_scope(self._fp32(ctx), ctx.variant.options, ctx.source.head))
        out = [replace(g, nodes=tuple(n for n in g.nodes if n not in kept)) for g in groups]
        return [g for g in out if g.nodes]

    def keep_float(self, groups: list[GroupError]) -> dict[str, Any]:
        """Each block as a node-name pattern (the scope's own nodes it also matches stay float either way), each
        single layer (a group of its own node) by its node name."""
        from yoloq.backends.onnxruntime.sensitivity import block_pattern

        layers = [g.group for g in groups if g.nodes == (g.group,)]
        blocks = [block_pattern(g.group) for g in groups if g.nodes != (g.group,)]
        out = {"float_patterns": blocks} if blocks or not layers else {}
        return out | ({"float_nodes": layers} if layers else {})

    def explain(self, artifact: Artifact, batch: Any, threads: int, runs: int = 5) -> list[LayerRun]:
        """The optimized graph's nodes as a profiling run executes them (kernel op, output type, time, MACs)."""
        from yoloq.backends.onnxruntime.profile import profile

        return profile(Path(artifact.path), batch, threads, runs)

    def sensitivity(self, ctx: ExportContext, granularity: str, images: int) -> list[GroupError]:
        """Rank groups by output SQNR when each alone is INT8 (ranges from the variant's calibration images, read
        from the ranges its exports share where they are there: a block and a layer ranking calibrate once)."""
        from yoloq.backends.onnxruntime.quantize import calibrate
        from yoloq.backends.onnxruntime.sensitivity import rank_groups

        fp32 = self._fp32(ctx)
        with tempfile.TemporaryDirectory(prefix="yoloq-sens-") as tmp:
            t = Path(tmp)
            prep, cache, _ = calibrate(fp32, t, ctx.calibration_images(), ctx.imgsz, ctx.variant.options,
                                       t / "full.onnx", share=ctx.workdir.parent / "_ranges")
            batches = list(ctx.calibration.batches(ctx.imgsz, images))
            return rank_groups(prep, ctx.variant.options, cache, batches, ctx.imgsz, ctx.threads, granularity)
