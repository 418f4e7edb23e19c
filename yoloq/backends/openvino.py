"""OpenVINO: FP32 (true f32 execution), FP16 (compressed weights) and INT8 (NNCF post-training quantization)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from yoloq.backends.base import Artifact, Backend, ExportContext, LayerRun, OptionSpec, Style, TuneCandidate, lacks_vnni
from yoloq.backends.onnx_base import base_onnx
from yoloq.backends.registry import register
from yoloq.backends.scope import CALIBRATION_IMAGES, CONTROL_OPTIONS, INT8, PREQUANTIZED, SCOPE_OPTIONS, float_scope
from yoloq.errors import BackendUnavailable, ExportError, YoloqError
from yoloq.progress import Counted, step


class OvRuntime:
    """A compiled OpenVINO model on the CPU with explicit threads and inference precision: for latency (one stream,
    ``requests`` None) or for throughput (the THROUGHPUT hint, told how many requests will be in flight)."""

    def __init__(self, xml: Path, threads: int, precision_hint: str | None, requests: int | None = None,
                 batch: int = 1) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(xml))
        if batch != 1:
            from yoloq.backends.batched import ov_with_batch

            model = ov_with_batch(model, batch)
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads}
        config |= {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"} if requests is None else \
            {"PERFORMANCE_HINT": "THROUGHPUT", "PERFORMANCE_HINT_NUM_REQUESTS": requests}
        if precision_hint:
            config["INFERENCE_PRECISION_HINT"] = precision_hint
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        ran = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        self.info: dict[str, Any] = {"threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
                                     "inference_precision": ran}
        if requests is not None:
            cpu_streams = int(self.compiled.get_property("NUM_STREAMS"))
            self.info["concurrency"] = (f"one model compiled with the THROUGHPUT hint, {requests} infer request"
                                        f"{'s' * (requests > 1)} in flight; OpenVINO chose {cpu_streams} CPU stream"
                                        f"{'s' * (cpu_streams > 1)} on {self.info['threads']} threads")

    def another_request(self) -> OvRuntime:
        """The same compiled model with its own infer request (one per stream in flight)."""
        other = copy.copy(self)
        other.request, other.info = self.compiled.create_infer_request(), dict(self.info)
        return other

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run one synchronous inference."""
        self.request.infer({0: batch}, share_inputs=True)
        return self.request.get_output_tensor(0).data.copy()


def model_xml(path: Path) -> Path:
    """The IR of an OpenVINO export: the ``.xml`` itself, yoloq's ``model.xml`` in its folder, or the one ``.xml``
    of another exporter's folder (Ultralytics writes ``<model>.xml``)."""
    if path.suffix == ".xml" or (path / "model.xml").is_file():
        return path if path.suffix == ".xml" else path / "model.xml"
    found = sorted(path.glob("*.xml"))
    if len(found) != 1:
        raise ExportError(f"{path} holds {len(found)} OpenVINO .xml files; give the one to evaluate")
    return found[0]


def runs_without_vnni(machine: Mapping[str, Any]) -> bool:
    """Whether OpenVINO's int8 kernels run without VNNI here: the CPU has none, or oneDNN is capped below it
    (``ONEDNN_MAX_CPU_ISA``, e.g. ``AVX2`` or ``AVX512_CORE``, as when checking another machine's rounding)."""
    import os

    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return lacks_vnni(machine) or not any(k in cap for k in ("VNNI", "AMX", "ALL", "DEFAULT"))


@register
class OpenVinoBackend(Backend):
    """OpenVINO on the CPU; INT8 through NNCF with yoloq's calibration images."""

    name = "openvino"
    precisions = ("fp32", "fp16", "int8")
    install_hint = "pip install openvino nncf"
    libraries = ("openvino", "nncf")
    style = Style(color="#9467bd")
    reads_qdq_onnx = True
    options = {
        "preset": OptionSpec(str, "mixed", ("mixed", "performance"), "NNCF preset (mixed: asymmetric activations)",
                             INT8),
        "calibration_images": CALIBRATION_IMAGES,
        **SCOPE_OPTIONS,
        **CONTROL_OPTIONS,
        **PREQUANTIZED,
        "fast_bias_correction": OptionSpec(bool, True, None, "NNCF fast bias correction (false: full)", INT8),
        # NNCF's fix for int8 saturation on CPUs without VNNI: the first layer's weights (its default), every
        # layer's, or none; yoloq tune makes "enable" the baseline on such machines
        # (a Q/DQ file, e.g. from QAT, is changed only by "enable": every weight on 7 bits)
        "overflow_fix": OptionSpec(str, "first_layer", ("first_layer", "enable", "disable"),
                                   "NNCF overflow fix (7-bit weights) where it applies", INT8, before="first_layer"),
    }

    def version(self) -> str:
        try:
            import openvino
        except ImportError:
            raise BackendUnavailable(f"openvino is not installed ({self.install_hint})") from None
        return openvino.__version__

    def qdq_variant_options(self, onnx_path: Path, machine: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The Q/DQ file as it is, its weights on 7 bits where this CPU (or oneDNN's ISA cap) has no VNNI."""
        fix = {"overflow_fix": "enable"} if machine is not None and runs_without_vnni(machine) else {}
        return {"prequantized": str(onnx_path)} | fix

    def tune_space(self, machine: Mapping[str, Any]) -> list[TuneCandidate]:
        """NNCF's presets and algorithms and the head's scope; without VNNI, NNCF's overflow fix on every layer."""
        safe = runs_without_vnni(machine)
        base = {"overflow_fix": "enable"} if safe else {}
        why = "; overflow fix on every layer, since this CPU has no VNNI" if safe else ""
        out = [TuneCandidate(n, base | o, w + why) for n, o, w in (
            ("default", {}, "NNCF's mixed preset (asymmetric activations), fast bias correction"),
            ("performance", {"preset": "performance"}, "symmetric activations (NNCF's performance preset)"),
            ("full-bias-correction", {"fast_bias_correction": False}, "NNCF's full bias correction"),
            ("head-decode", {"keep_head_float": "decode"}, "the head's output convolutions in int8 too"))]
        out.append(TuneCandidate("first-layer-fix", {}, "NNCF's default overflow fix (first layer only) although "
                                 "this CPU has no VNNI, for evidence") if safe else
                   TuneCandidate("overflow-fix", {"overflow_fix": "enable"}, "7-bit weights everywhere (NNCF's "
                                 "overflow fix), which CPUs without VNNI need"))
        return out

    def export(self, ctx: ExportContext) -> Artifact:
        import openvino as ov

        pre = ctx.variant.options.get("prequantized")
        onnx_path = Path(pre) if pre else base_onnx(ctx.source, ctx.imgsz, ctx.workdir.parent, max_det=ctx.max_det)
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        xml = ctx.workdir / "model.xml"
        p = ctx.variant.precision
        info: dict[str, Any] = {}
        seven = None
        if p == "int8" and pre and ctx.variant.options.get("overflow_fix") == "enable":
            from yoloq.qdq import seven_bit_weights  # the Q/DQ file's weights on 7 bits, as NNCF's fix makes them

            seven = ctx.workdir / "seven_bit.onnx"
            n = seven_bit_weights(onnx_path, seven)
            info["overflow_fix"] = f"{n} weights on 7 bits (CPUs without VNNI saturate on 8-bit weights)"
        with step(f"export {ctx.variant.label}"):
            model = ov.convert_model(str(seven or onnx_path), input=[1, 3, ctx.imgsz, ctx.imgsz])
        if seven is not None:
            seven.unlink()
        if p == "int8" and pre:  # Q/DQ from QAT: OpenVINO reads it as INT8 FakeQuantize, nothing to calibrate
            info["quantizer"] = "quantization-aware training (Ultralytics + ModelOpt Q/DQ)"
        elif p == "int8":
            model, info = self._quantize(ctx, model, onnx_path)
        ov.save_model(model, str(xml), compress_to_fp16=(p == "fp16"))
        return Artifact(ctx.workdir, self.name, p, info)

    def _quantize(self, ctx: ExportContext, model: Any, onnx_path: Path) -> tuple[Any, dict[str, Any]]:
        try:
            import nncf
            from nncf.common.logging import nncf_logger
        except ImportError:
            raise BackendUnavailable("nncf is not installed (pip install nncf)") from None
        nncf_logger.setLevel(logging.WARNING)
        ops = {op.get_friendly_name() for op in model.get_ops()}
        # OpenVINO splits an ONNX Conv with bias into Convolution ("<name>/WithoutBiases") + Add ("<name>")
        scope = float_scope(onnx_path, ctx.variant.options, ctx.source.head)
        keep = [m for n in scope for m in (n, f"{n}/WithoutBiases") if m in ops]
        images = list(ctx.calibration_images().batches(ctx.imgsz, progress="  loading calibration"))
        preset = nncf.QuantizationPreset.MIXED if ctx.option("preset") == "mixed" \
            else nncf.QuantizationPreset.PERFORMANCE
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        fix = {"first_layer": OverflowFix.FIRST_LAYER, "enable": OverflowFix.ENABLE,
               "disable": OverflowFix.DISABLE}[ctx.variant.options.get("overflow_fix", "first_layer")]
        common = {"preset": preset, "subset_size": len(images),
                  "advanced_parameters": AdvancedQuantizationParameters(overflow_fix=fix),
                  "fast_bias_correction": ctx.option("fast_bias_correction"),
                  "ignored_scope": nncf.IgnoredScope(names=keep, validate=False) if keep else None}
        info: dict[str, Any] = {"quantizer": f"nncf {nncf.__version__} quantize", "kept_float": keep,
                                "settings": dict(ctx.variant.options), "calibration_used": len(images)}
        with step(f"quantize {ctx.variant.label}"):
            try:
                if ctx.option("accuracy_control"):
                    q, info["accuracy_control"] = self._with_control(ctx, model, images, common)
                    info["quantizer"] = f"nncf {nncf.__version__} quantize_with_accuracy_control"
                else:
                    q = nncf.quantize(model, nncf.Dataset(Counted(images, "calibration (NNCF pass)")), **common)
            except YoloqError:
                raise
            except Exception as e:  # noqa: BLE001 - NNCF raises many kinds
                raise ExportError(f"NNCF INT8 quantization failed: {type(e).__name__}: {e}") from e
        return q, info

    def _with_control(self, ctx: ExportContext, model: Any, images: list[Any], common: dict[str, Any]
                      ) -> tuple[Any, dict[str, Any]]:
        """NNCF's accuracy-aware quantization, judged by the pipeline's validator on held-out train images."""
        import nncf

        if ctx.validator is None:
            raise ExportError("accuracy control needs held-out images to judge on (run it via yoloq run)")
        validate = ctx.validator(ctx.option("holdout_images"), len(images))
        scores: list[float] = []

        def validation_fn(compiled: Any, data: Any) -> float:
            out = compiled.outputs[0]
            scores.append(validate(lambda x: compiled(x)[out], list(data)))
            return scores[-1]

        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        q = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(images), nncf.Dataset(list(validate.items), lambda item: item[0]), validation_fn,
            max_drop=ctx.option("max_drop"), drop_type=nncf.DropType.ABSOLUTE,
            advanced_quantization_parameters=common["advanced_parameters"],  # this call's name for it
            # NNCF reverts one group of operations to float per iteration: max_float_groups bounds them
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=ctx.option("max_float_groups")),
            **{k: v for k, v in common.items() if k != "advanced_parameters"})
        return q, {"heldout_images": len(validate.items), "max_drop": ctx.option("max_drop"),
                   "max_float_groups": ctx.option("max_float_groups"), "validations": len(scores),
                   "heldout_maps": [round(v, 5) for v in scores]}

    def explain(self, artifact: Artifact, batch: Any, threads: int, runs: int = 5) -> list[LayerRun]:
        """The compiled model's executed nodes (OpenVINO's per-node profiling): kernel, precision, time, MACs."""
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(model_xml(Path(artifact.path))))
        macs = {}
        for op in model.get_ops():
            if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul"):
                w, y = op.input(1).get_partial_shape(), op.output(0).get_partial_shape()
                if w.is_static and y.is_static:
                    ws, ys = [d.get_length() for d in w], [d.get_length() for d in y]
                    k = int(np.prod(ws[1:])) if op.get_type_name() == "Convolution" else \
                        int(np.prod(ws[2:])) if op.get_type_name() == "GroupConvolution" else ws[-2]
                    macs[op.get_friendly_name()] = int(np.prod(ys[1:])) * k
        hint = {"INFERENCE_PRECISION_HINT": "f32"} if artifact.precision == "fp32" else {}
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                     "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True, **hint})
        request = compiled.create_infer_request()
        request.infer({0: batch})
        total: dict[str, float] = {}
        last: dict[str, Any] = {}
        for _ in range(runs):
            request.infer({0: batch})
            for p in request.get_profiling_info():
                if str(p.status).endswith("EXECUTED") and "NOT_RUN" not in str(p.status):
                    total[p.node_name] = total.get(p.node_name, 0.0) + p.real_time.total_seconds() * 1e3
                    last[p.node_name] = p
        out = []
        for name, p in last.items():
            kind = p.exec_type.rsplit("_", 1)[-1].lower()
            prec = {"i8": "int8", "u8": "int8", "bf16": "bf16", "f16": "fp16", "fp16": "fp16", "f32": "fp32",
                    "fp32": "fp32"}.get(kind, kind)
            if p.node_type in ("Reorder", "Convert", "FakeQuantize"):
                prec = "convert"
            out.append(LayerRun(name, f"{p.node_type} ({p.exec_type})", prec, total[name] / runs, macs.get(name, 0)))
        return out

    def load(self, artifact: Artifact, threads: int, device: str = "cpu", requests: int | None = None,
             batch: int = 1) -> OvRuntime:
        # OpenVINO runs "FP32" in BF16 on AMX CPUs unless told otherwise: FP32 asks for true f32.
        hint = "f32" if artifact.precision == "fp32" else None
        rt = OvRuntime(model_xml(Path(artifact.path)), threads, hint, requests, batch)
        ran = rt.info["inference_precision"]
        rt.info["precision_ran"] = {"fp32": ran, "fp16": f"{ran} compute (fp16 weights)",
                                    "int8": f"int8 ({ran} for float ops)"}[artifact.precision]
        return rt

    def batched_runtime(self, artifact: Artifact, batch: int, threads: int, device: str = "cpu") -> OvRuntime:
        """The IR reshaped to ``batch`` (its reshapes' leading 1 as 0), compiled for latency."""
        return self.load(artifact, threads, device, batch=batch)

    def load_streams(self, artifact: Artifact, streams: int, threads: int, device: str = "cpu") -> list[OvRuntime]:
        """One model compiled with OpenVINO's THROUGHPUT hint for ``streams`` requests in flight (it chooses its CPU
        streams, as ``benchmark_app -hint throughput`` does), one infer request per stream."""
        first = self.load(artifact, threads, device, requests=streams)
        return [first] + [first.another_request() for _ in range(streams - 1)]
