"""LiteRT (TFLite): FP32 via Ultralytics' litert_torch export; FP16 weights and static INT8 via ai-edge-quantizer."""

from __future__ import annotations

from dataclasses import replace
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
from yoloq.backends.litert_ranges import calibrate, quiet_bars
from yoloq.backends.litert_scope import (
    ATTENTION,
    KEEP_ATTENTION_FLOAT,
    KEEP_STEM_FLOAT,
    float_ops,
    float_weight_patterns,
    head_patterns,
    scope_rules,
    stem_pattern,
)
from yoloq.backends.onnx_base import base_path, head_args, ultralytics_export
from yoloq.backends.registry import register
from yoloq.backends.scope import CALIBRATION_IMAGES, INT8, KEEP_HEAD_FLOAT
from yoloq.errors import BackendUnavailable, ConfigError, ExportError
from yoloq.models import Head
from yoloq.progress import Counted, step


class LiteRtRuntime:
    """A LiteRT interpreter (XNNPACK on the CPU) with explicit threads.

    Ultralytics' LiteRT export divides box coordinates by the input size (so INT8 keeps score
    resolution); ``predict`` multiplies them back so the output matches every other backend.
    """

    def __init__(self, path: Path | bytes, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        model = {"model_content": path} if isinstance(path, bytes) else {"model_path": str(path)}
        self.interpreter = Interpreter(**model, num_threads=threads)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        shape = [int(x) for x in self._in["shape"]]
        self._nchw = shape[1] == 3
        self._imgsz = shape[2] if self._nchw else shape[1]
        self.info: dict[str, Any] = {"threads": threads, "input_shape": [int(x) for x in self._in["shape"]]}

    def raw(self, batch: np.ndarray) -> np.ndarray:
        """The model's own output for one NCHW batch (transposed to NHWC when the model wants it): boxes
        divided by the input size, as the export gives them."""
        x = batch if self._nchw else batch.transpose(0, 2, 3, 1)
        self.interpreter.set_tensor(self._in["index"], np.ascontiguousarray(x, dtype=self._in["dtype"]))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out["index"]).astype(np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """The raw head output with boxes in input pixels, as every backend gives it."""
        y = self.raw(batch)
        if y.ndim == 3 and y.shape[1] < y.shape[2]:  # [B, 4+nc, N]: denormalise xywh
            y[:, :4] *= self._imgsz
        return y


def _signature_input(path: Path) -> tuple[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    sigs = Interpreter(model_path=str(path)).get_signature_list()
    key = next(iter(sigs))
    return key, sigs[key]["inputs"][0]


@register
class LiteRtBackend(Backend):
    """LiteRT with the XNNPACK CPU delegate."""

    name = "litert"
    precisions = ("fp32", "fp16", "int8")
    sources = ("pt",)
    install_hint = "pip install litert-torch ai-edge-litert ai-edge-quantizer"
    supports_sensitivity = True
    libraries = ("ai-edge-litert", "ai-edge-quantizer", "litert-torch")
    style = Style(color="#ff7f0e")
    options = {
        "calibration_images": CALIBRATION_IMAGES,
        "activation_bits": OptionSpec(int, 8, (8, 16), "INT8 weights with int8 or int16 activations", INT8),
        # how per-image activation ranges combine: ai-edge-quantizer's own is an exponential moving
        # average (0.95), so the last ~20 images decide and the result moves with the image order;
        # "mean" averages every image's min/max (order-free), "minmax" takes the extremes, "p75"/"p90" the
        # 75th/90th percentile over images of each image's max (and 25th/10th of its min). The mean is the
        # default, chosen with the stem on held-out train images (configs/int8-holdout-*.yaml,
        # results/int8-holdout/amd-epyc-2c-792874): with 3 layers in float its detections agreed with torch
        # FP32's more than p75's on both folds (worst fold 0.980 against 0.972). p90 was the default for one
        # run, picked by the earlier retention-only rule (worst-fold agreement 0.947), and lost on coco128 val2017.
        "calibrate_method": OptionSpec(str, "mean", ("mean", "p75", "p90", "minmax", "ema"),
                                       "activation ranges over images", INT8),
        # how each int8 convolution's per-channel weight scale is set: its largest weight ("minmax"), or
        # ai-edge-quantizer's clipping that minimises the weights' mean squared error, OCTAV's (Sakr et al.
        # 2022, Newton iterations) or "mse" (0.054 x the channel's RMS, a Gaussian's optimum)
        "weight_clipping": OptionSpec(str, "minmax", ("minmax", "octav", "mse"),
                                      "int8 convolution weight scales: largest weight or MSE-optimal clipping", INT8,
                                      before="minmax"),
        # how the int8 convolution weights are rounded on that grid: to nearest, or by GPTQ (litert_gptq.py), each
        # convolution's rounding error folded into its weights not yet rounded, from its inputs on the first
        # GPTQ_IMAGES calibration images; the same int8 grid and speed, only the integers differ
        "weight_rounding": OptionSpec(str, "nearest", ("nearest", "gptq"),
                                      "int8 convolution weights rounded to nearest or by GPTQ", INT8, before="nearest"),
        "keep_head_float": KEEP_HEAD_FLOAT,
        "keep_attention_float": KEEP_ATTENTION_FLOAT,
        "keep_stem_float": KEEP_STEM_FLOAT,
        "float_patterns": OptionSpec(list, None, None, "regular expressions of TFLite tensor names kept in float",
                                     INT8),
        "float_types": OptionSpec(list, None, None, "TFLite op types kept in float, e.g. [SOFTMAX, LOGISTIC]", INT8),
    }

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version
        from importlib.util import find_spec

        if find_spec("ai_edge_litert") is None:
            raise BackendUnavailable(f"LiteRT is not installed ({self.install_hint})")
        try:
            return version("ai-edge-litert")
        except PackageNotFoundError:
            return "unknown"

    def tune_space(self, machine: Mapping[str, Any]) -> list[TuneCandidate]:
        """Range estimators, the stem and head scope, and fewer calibration images."""
        return [TuneCandidate(n, o, w) for n, o, w in (
            ("default", {}, "LiteRT's defaults in yoloq"),
            ("p90", {"calibrate_method": "p90"}, "ranges from the 90th percentile of images' extremes"),
            ("stem2", {"keep_stem_float": 2}, "one layer fewer in float (faster, if accuracy holds)"),
            ("stem4", {"keep_stem_float": 4}, "one layer more in float"),
            ("head-decode", {"keep_head_float": "decode"}, "the head's output convolutions in int8 too"),
            ("cal64", {"calibration_images": 64}, "64 calibration images: is the default's 200 needed?"),
            ("gptq", {"weight_rounding": "gptq"}, "int8 weights rounded by GPTQ against their inputs, not to nearest"))]

    @staticmethod
    def _fp32(ctx: ExportContext) -> tuple[Head, Path]:
        """The head this variant carries and the FP32 LiteRT file its FP16/INT8 forms are made from (exported
        once per model, size and head branch)."""
        head = ctx.source.head
        if head.end2end and ctx.variant.precision == "int8":  # as Ultralytics' exporter: int8 activations collapse
            head = replace(head, end2end=False, reason="LiteRT INT8 cannot carry the one-to-one branch (static int8 "
                                                       "activations collapse its class index; Ultralytics' exporter "
                                                       "falls back the same way): one-to-many branch + NMS")
        tag, args = head_args(ctx.source, ctx.max_det, head.end2end)
        fp32 = base_path(ctx.source, ctx.imgsz, ctx.workdir.parent, f"{tag}fp32.tflite")
        if not fp32.is_file():
            ultralytics_export(ctx.source, fp32, format="litert", imgsz=ctx.imgsz, batch=1, **args)
        return head, fp32

    def export(self, ctx: ExportContext) -> Artifact:
        p = ctx.variant.precision
        if p == "int8" and ctx.option("weight_rounding") == "gptq" and ctx.option("weight_clipping") != "minmax":
            raise ConfigError("options.weight_rounding: gptq rounds on the largest-weight grid; set weight_clipping: "
                              "minmax (the default) or weight_rounding: nearest")
        head, fp32 = self._fp32(ctx)
        base_info = {"boxes_normalized": True, "head": head.describe()}
        if p == "fp32":
            return Artifact(fp32, self.name, p, base_info)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        out = ctx.workdir / f"model_{p}.tflite"
        try:
            from ai_edge_quantizer import qtyping, quantizer, recipe_manager
            from ai_edge_quantizer.algorithm_manager import AlgorithmName
        except ImportError:
            raise BackendUnavailable("ai-edge-quantizer is not installed (pip install ai-edge-quantizer)") from None
        rounded: dict[str, Any] = {}
        if p == "int8" and ctx.option("weight_rounding") == "gptq":
            fp32, rounded = self._gptq(ctx, fp32, head)
        qt = quantizer.Quantizer(str(fp32))
        with step(f"quantize {ctx.variant.label}"):
            try:
                if p == "fp16":
                    rm = recipe_manager.RecipeManager()
                    for op in (qtyping.TFLOperationName.CONV_2D, qtyping.TFLOperationName.DEPTHWISE_CONV_2D,
                               qtyping.TFLOperationName.FULLY_CONNECTED):
                        rm.add_weight_only_config(regex=".*", operation_name=op, num_bits=16,
                                                  algorithm_key=AlgorithmName.FLOAT_CASTING)
                    qt.load_quantization_recipe(rm.get_quantization_recipe())
                    with quiet_bars():
                        qt.quantize().export_model(str(out), overwrite=True)
                    info = {"quantizer": "ai-edge-quantizer float_casting (fp16 weights)"}
                else:
                    info = self._int8(ctx, qt, fp32, out, head)
            except (BackendUnavailable, ExportError):
                raise
            except Exception as e:  # noqa: BLE001 - the quantizer raises many kinds
                raise ExportError(f"ai-edge-quantizer {p} failed: {type(e).__name__}: {e}") from e
        return Artifact(out, self.name, p, {**base_info, **info, **rounded})

    @staticmethod
    def _static_recipe(ctx: ExportContext, qt: Any, head: Head, only: str = ".*") -> list[tuple[str, str]]:
        """Load the variant's whole static INT8 recipe into ``qt``, for the ops whose tensor names match ``only``
        (the rest stays FP32: what sensitivity quantizes one block at a time): the int8 default, its float scope
        after it (later rules win in ai-edge-quantizer), float input and output, and the float-compute ops'
        stored weights (fp16 for the head's output convolutions and the attention, int8 for the stem). Returns
        the float scope's rules."""
        from ai_edge_quantizer import qtyping, recipe

        def within(regex: str) -> str:  # ai-edge-quantizer matches with re.search: both must match the name
            return regex if only == ".*" else rf"^(?=.*{only})(?=.*{regex})"

        bits = ctx.option("activation_bits")
        default = recipe.static_wi8_ai8() if bits == 8 else recipe.static_wi8_ai16()
        qt.load_quantization_recipe([dict(r, regex=only) for r in default])
        conv, dw = qtyping.TFLOperationName.CONV_2D, qtyping.TFLOperationName.DEPTHWISE_CONV_2D
        clip = ctx.option("weight_clipping")
        if clip != "minmax":  # the same int8 config, the weight scales from the clipping algorithm
            algorithm = {"octav": recipe.AlgorithmName.OCTAV, "mse": recipe.AlgorithmName.MSE}[clip]
            int8 = qtyping.OpQuantizationConfig.from_dict(default[0]["op_config"])
            for op in (conv, dw):
                qt.update_quantization_recipe(regex=only, operation_name=op, op_config=int8, algorithm_key=algorithm)
        for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):  # float in/out
            qt.update_quantization_recipe(regex=".*", operation_name=op,
                                          algorithm_key=recipe.AlgorithmName.NO_QUANTIZE)
        kept = scope_rules(ctx.variant.options, {t.name for t in qtyping.TFLOperationName}, head)
        for regex, op in kept:
            qt.update_quantization_recipe(regex=regex, operation_name=getattr(qtyping.TFLOperationName, op),
                                          algorithm_key=recipe.AlgorithmName.NO_QUANTIZE)
        # float compute, weights stored as fp16: the head's output convolutions (0.30x -> 0.296x) and the
        # attention's convolutions (int8-stored weights kept less on both held-out folds)
        fp16 = qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True)
        halves = [(r, conv) for r in head_patterns(head, "outputs")[1]] if ctx.option("keep_head_float") == "outputs" \
            else []
        halves += [(ATTENTION, conv), (ATTENTION, dw)] if ctx.option("keep_attention_float") else []
        for regex, op in halves:
            qt.update_quantization_recipe(regex=within(regex), operation_name=op, op_config=fp16,
                                          algorithm_key=recipe.AlgorithmName.FLOAT_CASTING)
        # the stem: float compute, weights stored int8 (per channel), so the file does not grow. On held-out
        # train images its error is the activations' (a scratch measurement on amd-epyc-2c-792874, 3 layers
        # in float: int8-, fp16- and fp32-stored weights moved the boxes alike, mean IoU with FP32's boxes
        # 0.984-0.985 against 0.973 with the stem in int8)
        w8 = qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(
                num_bits=8, symmetric=True, granularity=qtyping.QuantGranularity.CHANNELWISE),
            compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True)
        for regex in stem_pattern(ctx.option("keep_stem_float")):
            for op in (conv, dw):
                qt.update_quantization_recipe(regex=within(regex), operation_name=op, op_config=w8,
                                              algorithm_key=recipe.AlgorithmName.MIN_MAX_UNIFORM_QUANT)
        return kept

    @staticmethod
    def _gptq(ctx: ExportContext, fp32: Path, head: Head) -> tuple[Path, dict[str, Any]]:
        """A copy of the FP32 model whose int8-stored convolution weights are GPTQ-rounded (the stem's included;
        the head's decode and output convolutions, the attention and the user's float patterns and types not)."""
        from yoloq.backends import litert_gptq

        rounds = litert_gptq.name_filter(float_weight_patterns(ctx.variant.options, head),
                                         set(ctx.option("float_types") or []))
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        out = ctx.workdir / "gptq_fp32.tflite"
        with step(f"GPTQ {ctx.variant.label}"):
            images = ctx.calibration_images().take(litert_gptq.GPTQ_IMAGES).batches(ctx.imgsz, progress="  GPTQ inputs")
            try:
                done = litert_gptq.apply(fp32, out, images, rounds, ctx.threads)
            except (OSError, ValueError, np.linalg.LinAlgError) as e:
                raise ExportError(f"GPTQ rounding of {fp32.name} failed: {type(e).__name__}: {e}") from e
        return out, {"weight_rounding": f"GPTQ: {done['convolutions']} convolutions, inputs from {done['images']} "
                                        "calibration images"}

    def _int8(self, ctx: ExportContext, qt: Any, fp32: Path, out: Path, head: Head) -> dict[str, Any]:
        sig, name = _signature_input(fp32)
        bits = ctx.option("activation_bits")
        kept = self._static_recipe(ctx, qt, head)
        images = ctx.calibration_images().batches(ctx.imgsz, progress="  loading calibration")
        samples = Counted(({name: x} for x in images), "calibration")
        with quiet_bars():
            result = calibrate(qt, fp32, {sig: samples}, ctx.option("calibrate_method"))
            qt.quantize(calibration_result=result).export_model(str(out), overwrite=True)
        return {"quantizer": f"ai-edge-quantizer static_wi8_ai{bits}", "calibration_used": len(samples),
                "settings": dict(ctx.variant.options),
                "kept_float": float_ops(out, [r for r, _ in kept], {op for _, op in kept if op != "ALL_SUPPORTED"})}

    def sensitivity(self, ctx: ExportContext, granularity: str, images: int) -> list[GroupError]:
        """Rank the model's top-level modules by the output SQNR of the FP32 model with that module alone in INT8
        (the variant's ranges from its calibration images, its float scope and activation bits), measured on
        ``images`` calibration images, never evaluation ones: where LiteRT INT8 loses, block by block.

        Raises:
            ConfigError: For ``granularity`` "layer" (LiteRT ranks blocks: one quantized model per group).
        """
        if granularity != "block":
            raise ConfigError("LiteRT sensitivity ranks blocks (--granularity block): each group is one quantized "
                              "model")
        from ai_edge_quantizer import quantizer

        from yoloq.progress import bar

        head, fp32 = self._fp32(ctx)
        sig, name = _signature_input(fp32)
        qt = quantizer.Quantizer(str(fp32))
        self._static_recipe(ctx, qt, head)
        samples = [{name: x} for x in ctx.calibration_images().batches(ctx.imgsz, progress="  loading calibration")]
        with quiet_bars():
            ranges = calibrate(qt, fp32, {sig: samples}, ctx.option("calibrate_method"))
        batches = [s[name] for s in samples[:images]]
        def outputs(model: Path | bytes) -> np.ndarray:  # boxes stay divided by the input size: they weigh as scores
            rt = LiteRtRuntime(model, ctx.threads)
            return np.concatenate([rt.raw(x) for x in batches]).astype(np.float64)

        reference = outputs(fp32)
        results = []
        for i in bar(range(head.index + 1), desc="  sensitivity"):
            group = rf"_model/[\w.]+_{i}[/;]"
            qt = quantizer.Quantizer(str(fp32))
            self._static_recipe(ctx, qt, head, only=group)
            with quiet_bars():
                model = qt.quantize(calibration_result=ranges).quantized_model
            y = outputs(bytes(model))
            noise, signal = float(((reference - y) ** 2).sum()), float((reference ** 2).sum())
            results.append(GroupError(f"model.{i}", (group,), 10 * np.log10(signal / noise) if noise > 0
                                      else float("inf"), (noise / signal) ** 0.5))
        return sorted(results, key=lambda g: g.sqnr_db)

    def in_int8(self, ctx: ExportContext, groups: list[GroupError]) -> list[GroupError]:
        """The blocks past the float stem (a stem block computes in float already; its error is its int8 weights)."""
        stem = ctx.variant.options.get("keep_stem_float", KEEP_STEM_FLOAT.default)
        return [g for g in groups if int(g.group.rsplit(".", 1)[1]) >= stem]

    def keep_float(self, groups: list[GroupError]) -> dict[str, Any]:
        """Their TFLite tensor-name patterns (each ranked group is one top-level module's pattern)."""
        return {"float_patterns": [p for g in groups for p in g.nodes]}

    def explain(self, artifact: Artifact, batch: Any, threads: int, runs: int = 5) -> list[LayerRun]:
        """The interpreter's ops with the type they compute in and their MACs. LiteRT's Python API has no
        per-op profiler, so no times (``time_ms`` None)."""
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        model = fu.read_model(str(artifact.path))
        graph = model.subgraphs[0]
        types = {0: "fp32", 1: "fp16", 9: "int8", 3: "int8", 7: "int16", 2: "int32"}  # the TFLite schema's
        out = []
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            kind = names.get(max(code.builtinCode, getattr(code, "deprecatedBuiltinCode", 0)), "CUSTOM")
            y = graph.tensors[op.outputs[0]] if len(op.outputs) else None
            prec = types.get(y.type, str(y.type)) if y is not None else "?"
            if kind in ("QUANTIZE", "DEQUANTIZE"):
                prec = "convert"
            macs = 0
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and y is not None and len(op.inputs) > 1:
                w = [int(d) for d in graph.tensors[op.inputs[1]].shape]
                ys = [int(d) for d in y.shape]
                per = int(np.prod(w[1:])) if kind != "DEPTHWISE_CONV_2D" else int(np.prod(w[1:3]))
                macs = int(np.prod(ys[1:])) * per if kind != "FULLY_CONNECTED" else int(np.prod(ys)) * w[-1]
            name = fu.get_op_scope(op, graph.tensors).split(";;")[0].rstrip(";")
            out.append(LayerRun(name, kind, prec, None, macs))
        return out

    def load(self, artifact: Artifact, threads: int, device: str = "cpu") -> LiteRtRuntime:
        rt = LiteRtRuntime(Path(artifact.path), threads)
        int16 = "ai16" in str(artifact.info.get("quantizer", ""))  # activation_bits: 16
        rt.info["precision_ran"] = {"fp32": "fp32", "fp16": "fp32 compute (fp16 weights)",
                                    "int8": "int16 activations, int8 weights" if int16 else "int8"}[artifact.precision]
        return rt
