"""NCNN's ``yoloq tune`` candidates: ncnn2table's settings and what yoloq adds on ncnn's grid (activation
calibration, the stem in float, 8-bit 3x3 weights, GPTQ, distillation, centered inputs), each with what it does."""

from __future__ import annotations

from typing import Any


def distilled(name: str, stem: int, bits: int, steps: int, **extra: Any) -> tuple[str, dict[str, Any], str]:
    """A distillation candidate with a step budget and no clipping: its name, options and what it does."""
    opts = {"keep_stem_float": stem, "weight_bits_3x3": bits, "weight_rounding": "distill", "distill_steps": steps,
            "method": "max", **extra}
    what = [f"the first {stem} modules in float", f"{bits}-bit 3x3 weights" +
            (" (Winograd F(4,3) kept)" if bits == 6 else "") +
            (" and each convolution's input scale" if extra.get("distill_scales") else "") +
            f" learned by {steps} steps of distillation" +
            (" on calibration images mirrored and zoomed at random" if extra.get("distill_augment") else "") +
            (", with a detector's loss (the scores' cross-entropy, boxes weighted by score)"
             if extra.get("distill_loss") == "detection" else "") +
            (", the learning rate decayed along a half cosine" if extra.get("distill_schedule") == "cosine" else "") +
            (", each input shifted by its range's midpoint" if extra.get("centered_inputs") else ""),
            *([f"{', '.join(extra['float_modules'])} in float"] if extra.get("float_modules") else []), "no clipping"]
    return name, opts, ", ".join(what)


CANDIDATES: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("default", {}, "ncnn2table's KL calibration and 6-bit 3x3 weights, yoloq's head scope, the image's "
                    "known range"),
    ("aciq", {"method": "aciq"}, "ACIQ clipping instead of KL"),
    ("max", {"method": "max"}, "each activation's largest magnitude: no clipping"),
    ("input-calibrated", {"input_range": False}, "the image's range calibrated too (KL clips pixels)"),
    ("head-decode", {"keep_head_float": "decode"}, "the head's output convolutions in int8 too"),
    ("stem2-max", {"keep_stem_float": 2, "method": "max"}, "the first two layers in float, no clipping"),
    ("w8", {"weight_bits_3x3": 8}, "8-bit weights in the 3x3 stride-1 convolutions (no Winograd F(4,3))"),
    ("w8-max", {"weight_bits_3x3": 8, "method": "max"}, "8-bit 3x3 weights, no clipping"),
    ("w8-gptq", {"weight_bits_3x3": 8, "weight_rounding": "gptq"}, "8-bit 3x3 weights rounded by GPTQ"),
    ("w8-gptq-max", {"weight_bits_3x3": 8, "weight_rounding": "gptq", "method": "max"},
     "8-bit 3x3 weights rounded by GPTQ, no clipping"),
    ("w8-distill-max", {"weight_bits_3x3": 8, "weight_rounding": "distill", "method": "max"},
     "8-bit 3x3 weights learned by distillation from the FP32 model through ncnn's arithmetic, no "
     "clipping"),
    ("stem2-w8-max", {"keep_stem_float": 2, "weight_bits_3x3": 8, "method": "max"},
     "the first two layers in float, 8-bit 3x3 weights, no clipping"),
    ("stem2-w8-gptq-max", {"keep_stem_float": 2, "weight_bits_3x3": 8, "weight_rounding": "gptq",
                           "method": "max"}, "the first two layers in float, 8-bit 3x3 weights rounded by "
                                             "GPTQ, no clipping"),
    ("stem2-w8-distill-max", {"keep_stem_float": 2, "weight_bits_3x3": 8, "weight_rounding": "distill",
                              "distill_minutes": 10.0, "method": "max"},
     "the first two layers in float, 8-bit 3x3 weights learned by 10 min of distillation, no clipping"),
    ("stem2-distill-max", {"keep_stem_float": 2, "weight_rounding": "distill", "distill_minutes": 10.0,
                           "method": "max"},
     "the first two layers in float, 6-bit 3x3 weights (Winograd F(4,3) kept) learned by 10 min of "
     "distillation, no clipping"),
    # the step-budget candidates name every setting they are about: a variant that distils already (as a
    # tuned config's does) must not lend its own bits, step budget or augmentation to them
    distilled("stem2-w8-distill600-max", 2, 8, 600),
    distilled("stem2-distill600-max", 2, 6, 600),
    distilled("stem2-w8-distill600-aug-max", 2, 8, 600, distill_augment="flip-scale"),
    distilled("stem2-distill600-aug-max", 2, 6, 600, distill_augment="flip-scale"),
    distilled("stem2-w8-distill600-aug-lsq-max", 2, 8, 600, distill_augment="flip-scale",
              distill_scales=True),
    distilled("stem3-w8-distill600-aug-max", 3, 8, 600, distill_augment="flip-scale"),
    distilled("stem2-w8-distill224-aug-max", 2, 8, 224, distill_augment="flip-scale"),
    distilled("stem2-w8-distill600-aug-det-max", 2, 8, 600, distill_augment="flip-scale",
              distill_loss="detection"),
    distilled("stem2-w8-distill600-aug-cls-max", 2, 8, 600, distill_augment="flip-scale",
              float_modules=[f"model.23.cv3.{i}" for i in range(3)]),
    distilled("stem2-w8-distill600-aug-cos-max", 2, 8, 600, distill_augment="flip-scale",
              distill_schedule="cosine"),
    ("stem2-w8-center-max", {"keep_stem_float": 2, "weight_bits_3x3": 8, "method": "max", "centered_inputs": True,
                             "weight_rounding": "nearest"},
     "the first two layers in float, 8-bit 3x3 weights rounded to nearest, each input shifted by its range's "
     "midpoint (all 255 levels), no clipping"),
    distilled("stem2-w8-distill600-aug-center-max", 2, 8, 600, distill_augment="flip-scale", centered_inputs=True),
    distilled("stem2-w8-distill600-aug-cls-center-max", 2, 8, 600, distill_augment="flip-scale",
              float_modules=[f"model.23.cv3.{i}" for i in range(3)], centered_inputs=True),
)
