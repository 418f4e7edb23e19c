"""Accuracy control for ONNX Runtime INT8: keep the fewest groups in float that meet ``max_drop``.

Judged on held-out train images (not used for calibration, never evaluation images): the FP32 and
INT8 models are scored with pycocotools; while the INT8 drop exceeds ``max_drop``, the next most
sensitive group (sensitivity ranking on calibration images) goes back to float.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from yoloq.backends.base import ExportContext
from yoloq.errors import ExportError


def _map(model: Path, ctx: ExportContext, split: Any) -> float:
    from yoloq.accuracy import score
    from yoloq.backends.onnxruntime import OrtRuntime

    rt = OrtRuntime(model, ctx.threads, ["CPUExecutionProvider"])
    evaluator, _ = score(rt.predict, split, split.category_ids, ctx.imgsz, ctx.eval_cfg, ctx.source.end2end)
    return evaluator.evaluate().map50_95


def control(ctx: ExportContext, prep: Path, out: Path, cache: Path, exclude: list[str]
            ) -> tuple[list[str], dict[str, Any]]:
    """Re-quantize ``prep`` into ``out`` keeping groups in float until the held-out drop is within budget.

    Returns:
        The final float node list and a description for the record.
    """
    from yoloq.backends.onnxruntime import quantize_file
    from yoloq.sensitivity import rank_groups

    if ctx.holdout is None or ctx.eval_cfg is None:
        raise ExportError("accuracy control needs held-out images and evaluation settings (run it via yoloq run)")
    used = ctx.calibration.images[: ctx.option("calibration_images") or None]
    split = ctx.holdout(ctx.option("holdout_images"), used)
    max_drop = ctx.option("max_drop")
    fp32_map = _map(prep, ctx, split)
    q_map = _map(out, ctx, split)
    steps = [{"float_groups": 0, "heldout_map": q_map}]
    kept: list[str] = []
    if fp32_map - q_map > max_drop:
        batches = list(ctx.calibration.batches(ctx.imgsz, 8))
        ranking = rank_groups(prep, ctx.variant.options, cache, batches, ctx.imgsz, ctx.threads, skip=set(exclude))
        for g in ranking[: ctx.option("max_float_groups")]:
            kept.append(g.group)
            exclude = exclude + [n for n in g.nodes if n not in exclude]
            quantize_file(prep, out, ctx.variant.options, None, cache, exclude)
            q_map = _map(out, ctx, split)
            steps.append({"float_groups": len(kept), "group": g.group, "heldout_map": q_map})
            print(f"  accuracy control: +{g.group} in float -> held-out mAP50-95 {q_map:.4f} "
                  f"(fp32 {fp32_map:.4f})", file=sys.stderr)
            if fp32_map - q_map <= max_drop:
                break
    return exclude, {"heldout_images": len(split.samples), "heldout_fp32_map": fp32_map, "heldout_int8_map": q_map,
                     "max_drop": max_drop, "met": fp32_map - q_map <= max_drop, "float_groups": kept,
                     "steps": steps}
