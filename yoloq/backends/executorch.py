"""ExecuTorch with the XNNPACK delegate, PyTorch's own on-device runtime: FP32 through Ultralytics' exporter, INT8
through PT2E with ExecuTorch's XNNPACK quantizer (static, per-channel weights, calibrated on yoloq's calibration
images), both run by ExecuTorch's Python runtime.

The INT8 scope works on module names of the Ultralytics model (``model.<i>`` at the top level), as PT2E's quantizer
filters them: the head's decode (and by default its output convolutions) and the first ``keep_stem_float`` modules
are left out of quantization and run in float on XNNPACK. The INT8 program takes the exact rewrites but the split
first convolutions (``split_convs``: each half's own int8 scale cost YOLO11n accuracy); with them, SiLU can run in
int8 too (``int8_silu``, :mod:`yoloq.backends.executorch_quant`).
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from yoloq.backends.base import Artifact, Backend, ExportContext, LayerRun, OptionSpec, Style, TuneCandidate
from yoloq.backends.executorch_quant import in_int8, partitioner, scoped
from yoloq.backends.onnx_base import base_path, head_args, ultralytics_export
from yoloq.backends.registry import register
from yoloq.backends.scope import CALIBRATION_IMAGES, INT8, KEEP_HEAD_FLOAT, keep_stem_float
from yoloq.backends.torch_scope import export_module, module_scope
from yoloq.errors import BackendUnavailable, ExportError
from yoloq.progress import Counted, step
from yoloq.rewrite import INT8_REWRITES, REWRITES
from yoloq.rewrite import apply as rewrite_model

ATTENTION_TYPES = ("Attention", "AAttn")  # Ultralytics' attention modules (PSA / C2PSA, YOLO12's A2C2f)
REWRITTEN = "rewritten1"  # the FP32 export's cache folder: a new version of the rewrites gets a new name


class ExecuTorchRuntime:
    """An ExecuTorch program's ``forward`` on the CPU, XNNPACK's thread pool set to ``threads``."""

    def __init__(self, path: Path, threads: int) -> None:
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        portable_lib._unsafe_reset_threadpool(threads)
        self._torch = torch
        self.method = Runtime.get().load_program(Path(path)).load_method("forward")
        self.info: dict[str, Any] = {"threads": threads}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """The raw head output for one NCHW float32 batch."""
        out = self.method.execute([self._torch.from_numpy(np.ascontiguousarray(batch, np.float32))])[0]
        return out.numpy().astype(np.float32, copy=True)


class _Turns:
    """A stream's handle on a runtime that streams share one at a time."""

    def __init__(self, runtime: ExecuTorchRuntime, lock: threading.Lock) -> None:
        self.runtime, self.lock, self.info = runtime, lock, runtime.info

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """The runtime's predict, once no other stream is in it."""
        with self.lock:
            return self.runtime.predict(batch)


@register
class ExecuTorchBackend(Backend):
    """ExecuTorch (XNNPACK delegate) on the CPU."""

    name = "executorch"
    precisions = ("fp32", "int8")
    sources = ("pt",)
    install_hint = "pip install executorch"
    libraries = ("executorch", "torchao")
    style = Style(color="#8c564b")
    options = {
        "calibration_images": CALIBRATION_IMAGES,
        "keep_head_float": KEEP_HEAD_FLOAT,
        "keep_stem_float": keep_stem_float(0),
        "per_channel": OptionSpec(bool, True, None, "int8 weights per output channel (else per tensor)", INT8),
        "rewrite": OptionSpec(bool, True, None, "exact rewrites into forms XNNPACK runs (yoloq.rewrite: the DFL's "
                              "softmax on the last axis, the 2x nearest upsample as concatenations, a block's split "
                              "first convolution as two); false: the graph as Ultralytics exports it",
                              before=False),
        "keep_attention_float": OptionSpec(bool, False, None, "attention modules (PSA's Attention, YOLO12's AAttn) "
                                           "left in float", INT8),
        "split_convs": OptionSpec(bool, False, None, "with rewrite: the split first convolutions as two in the INT8 "
                                  "program too (faster, but each half then gets its own int8 scale: it cost YOLO11n "
                                  "0.5-1 mAP point); false: the split runs between delegate calls", INT8,
                                  before=True),
        "int8_silu": OptionSpec(bool, False, None, "SiLU in int8 inside the int8 region (its sigmoid at XNNPACK's "
                                "fixed int8 output scale, then the product); on YOLO11n it kept accuracy only with "
                                "split_convs; false: in float between conversions", INT8, before=False),
    }

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version
        from importlib.util import find_spec

        if find_spec("executorch") is None:
            raise BackendUnavailable(f"ExecuTorch is not installed ({self.install_hint})")
        try:
            return version("executorch")
        except PackageNotFoundError:
            return "unknown"

    def tune_space(self, machine: Mapping[str, Any]) -> list[TuneCandidate]:
        """The head's scope, the stem in float, fewer calibration images, the attention in float, the split
        convolutions as two and SiLU in int8."""
        return [TuneCandidate(n, o, w) for n, o, w in (
            ("default", {}, "ExecuTorch's XNNPACK quantizer with yoloq's head scope"),
            ("head-decode", {"keep_head_float": "decode"}, "the head's output convolutions in int8 too"),
            ("stem2", {"keep_stem_float": 2}, "the first two layers in float"),
            ("cal64", {"calibration_images": 64}, "64 calibration images: is the default's number needed?"),
            ("attention-float", {"keep_attention_float": True}, "the attention modules in float"),
            ("split-convs", {"split_convs": True}, "the split first convolutions as two in int8 too (faster)"),
            ("split-silu-int8", {"split_convs": True, "int8_silu": True},
             "the split convolutions as two and SiLU in int8: the fastest program"))]

    def export(self, ctx: ExportContext) -> Artifact:
        head = ctx.source.head
        if head.end2end:  # as Ultralytics' exporter: ExecuTorch's XNNPACK delegate has no top-k
            head = replace(head, end2end=False, reason="ExecuTorch cannot carry the one-to-one branch (its XNNPACK "
                                                       "delegate has no top-k; Ultralytics' exporter falls back the "
                                                       "same way): one-to-many branch + NMS")
        tag, args = head_args(ctx.source, ctx.max_det, head.end2end)
        base_info = {"head": head.describe()}
        if ctx.variant.precision == "fp32" and not ctx.option("rewrite"):
            folder = base_path(ctx.source, ctx.imgsz, ctx.workdir.parent, f"{tag}executorch")
            if not (folder / "model.pte").is_file():
                ultralytics_export(ctx.source, folder, format="executorch", imgsz=ctx.imgsz, batch=1, **args)
            return Artifact(folder / "model.pte", self.name, "fp32", base_info | {"delegate": "XnnpackPartitioner",
                                                                                    "rewrites": {}})
        if ctx.variant.precision == "fp32":
            pte = base_path(ctx.source, ctx.imgsz, ctx.workdir.parent, f"{tag}executorch-{REWRITTEN}") / "model.pte"
            counts = pte.with_name("rewrites.json")  # beside the program: a cached one needs no model to count
            if not (pte.is_file() and counts.is_file()):
                model = export_module(ctx.source, ctx.imgsz, head.end2end, ctx.max_det, "executorch")
                done = rewrite_model(model)
                with step(f"export {ctx.variant.label} (rewritten for XNNPACK, lowered by ExecuTorch)"):
                    pte.parent.mkdir(parents=True, exist_ok=True)
                    self._lower(model, ctx.imgsz, pte)
                tmp = counts.with_name(f".{counts.name}.tmp")
                tmp.write_text(json.dumps(done))
                tmp.replace(counts)
            info = {"rewrites": json.loads(counts.read_text())}
            return Artifact(pte, self.name, "fp32", base_info | info | {"delegate": "XnnpackPartitioner"})
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        out = ctx.workdir / "model_int8.pte"
        with step(f"quantize {ctx.variant.label} (PT2E, XNNPACK quantizer)"):
            try:
                info = self._int8(ctx, head.end2end, out)
            except (BackendUnavailable, ExportError):
                raise
            except Exception as e:  # noqa: BLE001 - torch.export and the quantizer raise many kinds
                raise ExportError(f"ExecuTorch INT8 failed: {type(e).__name__}: {e}") from e
        return Artifact(out, self.name, "int8", base_info | info)

    def _int8(self, ctx: ExportContext, end2end: bool, out: Path) -> dict[str, Any]:
        import torch
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        torch.set_num_threads(ctx.threads)
        model = export_module(ctx.source, ctx.imgsz, end2end, ctx.max_det, "executorch")
        silu = ctx.option("int8_silu")
        names = tuple(r for r in REWRITES if r != "split_first_conv" or ctx.option("split_convs"))
        rewrites = rewrite_model(model, names) if ctx.option("rewrite") else {}
        if silu:
            rewrites |= rewrite_model(model, INT8_REWRITES)
        example = (torch.zeros(1, 3, ctx.imgsz, ctx.imgsz),)
        config = get_symmetric_quantization_config(is_per_channel=ctx.option("per_channel"))
        floats, quantized = module_scope(model, ctx.option("keep_head_float"), ctx.option("keep_stem_float"))
        if ctx.option("keep_attention_float"):
            floats += [n for n, m in model.named_modules() if type(m).__name__ in ATTENTION_TYPES]
        quantizer = scoped(XNNPACKQuantizer().set_global(config), in_int8(set(floats), set(quantized)), config, silu)
        graph = torch.export.export(model, example).module()
        prepared = prepare_pt2e(graph, quantizer)
        images = Counted(ctx.calibration_images().batches(ctx.imgsz, progress="  loading calibration"), "calibration")
        with torch.no_grad():
            for x in images:
                prepared(torch.from_numpy(x))
        self._lower(convert_pt2e(prepared), ctx.imgsz, out, silu)
        return {"int8_silu": silu, "quantizer": "PT2E XNNPACKQuantizer, symmetric int8 (per-channel weights)"
                             if ctx.option("per_channel") else "PT2E XNNPACKQuantizer, symmetric int8 (per-tensor)",
                "rewrites": rewrites, "calibration_used": len(images), "settings": dict(ctx.variant.options),
                "kept_float": sorted(floats), "quantized_inside_float": sorted(quantized)}

    @staticmethod
    def _lower(model: Any, imgsz: int, out: Path, int8_silu: bool = False) -> None:
        """``model`` exported, lowered to the XNNPACK delegate and written as an ExecuTorch program (as Ultralytics'
        exporter does); ``int8_silu``: the delegate takes int8 sigmoids too."""
        import torch
        from executorch.exir import to_edge_transform_and_lower

        example = (torch.zeros(1, 3, imgsz, imgsz),)
        program = to_edge_transform_and_lower(torch.export.export(model, example),
                                              partitioner=[partitioner(int8_silu)]).to_executorch()
        out.write_bytes(program.buffer)

    def explain(self, artifact: Artifact, batch: np.ndarray, threads: int, runs: int = 5) -> list[LayerRun]:
        """XNNPACK's operators inside the delegate calls and the portable kernels between them, timed by
        ExecuTorch's event tracer, with the precision each computes in (:mod:`executorch_profile`); no MACs."""
        from yoloq.backends.executorch_profile import etdump_layers

        return etdump_layers(Path(artifact.path), batch, threads, runs)

    def load_streams(self, artifact: Artifact, streams: int, threads: int, device: str = "cpu") -> list[Any]:
        """One program with all the threads, its streams taking turns: ExecuTorch's Python runtime has one
        process-wide XNNPACK thread pool, and methods entered from several threads at once crash it (seen: a
        segmentation fault with two). The letterbox and NMS of the other streams still overlap the model."""
        rt = self.load(artifact, threads, device)
        rt.info["concurrency"] = (f"one program, {threads} threads, {streams} stream{'s' * (streams > 1)} taking "
                                  "turns (one process-wide thread pool)")
        return [_Turns(rt, lock) for lock in [threading.Lock()] for _ in range(streams)]

    def load(self, artifact: Artifact, threads: int, device: str = "cpu") -> ExecuTorchRuntime:
        rt = ExecuTorchRuntime(Path(artifact.path), threads)
        rt.info["precision_ran"] = "int8 (XNNPACK)" if artifact.precision == "int8" else "fp32 (XNNPACK)"
        return rt
