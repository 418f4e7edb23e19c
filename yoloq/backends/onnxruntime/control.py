"""Accuracy control for ONNX Runtime INT8: keep the fewest groups in float that meet ``max_drop``.

Judged by the pipeline's validator on held-out train images (not used for calibration, never
evaluation images): while the INT8 drop against FP32 exceeds ``max_drop``, the next most sensitive
group (sensitivity ranking on calibration images) goes back to float.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from yoloq.backends.base import ExportContext
from yoloq.backends.onnxruntime.quantize import quantize_file
from yoloq.backends.onnxruntime.runtime import OrtRuntime
from yoloq.backends.onnxruntime.sensitivity import rank_groups
from yoloq.errors import ExportError


def control(ctx: ExportContext, prep: Path, out: Path, cache: Path, exclude: list[str],
            options: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Re-quantize ``prep`` into ``out`` keeping groups in float until the held-out drop is within budget.

    ``options`` are the quantizer settings actually used (default: the variant's).

    Returns:
        The final float node list and a description for the record.
    """
    if ctx.validator is None:
        raise ExportError("accuracy control needs held-out images to judge on (run it via yoloq run)")
    used = len(ctx.calibration_images().images)
    options = options or dict(ctx.variant.options)
    validate = ctx.validator(ctx.option("holdout_images"), used)
    max_drop = ctx.option("max_drop")

    def score(model: Path) -> float:
        return validate(OrtRuntime(model, ctx.threads).predict)

    fp32_map = score(prep)
    q_map = score(out)
    steps = [{"float_groups": 0, "heldout_map": q_map}]
    kept: list[str] = []
    if fp32_map - q_map > max_drop:
        batches = list(ctx.calibration.batches(ctx.imgsz, 8))
        ranking = rank_groups(prep, options, cache, batches, ctx.imgsz, ctx.threads, skip=set(exclude))
        for g in ranking[: ctx.option("max_float_groups")]:
            kept.append(g.group)
            exclude = exclude + [n for n in g.nodes if n not in exclude]
            quantize_file(prep, out, options, cache, exclude)
            q_map = score(out)
            steps.append({"float_groups": len(kept), "group": g.group, "heldout_map": q_map})
            print(f"  accuracy control: +{g.group} in float -> held-out mAP50-95 {q_map:.4f} "
                  f"(fp32 {fp32_map:.4f})", file=sys.stderr)
            if fp32_map - q_map <= max_drop:
                break
    return exclude, {"heldout_images": len(validate.items), "heldout_fp32_map": fp32_map, "heldout_int8_map": q_map,
                     "max_drop": max_drop, "met": fp32_map - q_map <= max_drop, "float_groups": kept,
                     "steps": steps}
