"""How far a correct export's raw head output may lie from torch FP32's: derived on the model and image under test
from torch itself, never fitted to one machine's kernels.

Two correct implementations of one graph in one arithmetic differ only by that arithmetic's rounding, each summing
in its own order with its own instructions. So the tolerance of a precision is ``margin`` times what running torch's
own model in that arithmetic moves its output away from float64 (its "twin"):

- fp32: the model in float32 (the families test's rule: 10x);
- fp16: in float16, or in bfloat16 where the runtime reports bf16 compute (OpenVINO on BF16 CPUs) (10x);
- int8: every convolution's weights rounded to int8 per output channel (symmetric) and its input to uint8 per
  tensor over that input's own range, the grid the INT8 backends here quantize on; where a runtime reports
  symmetric int8 activations (ncnn), its input to signed int8 over its largest magnitude instead. Each backend
  chooses its own ranges (calibration, percentiles) and keeps some layers float, so it lies near the twin, not on
  it: 1.2-1.7x on the shared YOLO11n (intel-xeon 2c with AMX, 2026-12-05); margin 3.

Two statistics: the largest box error (input pixels) over the anchors torch scores >= 0.25 (the ones that become
detections: an unconfident anchor's box is noise) and the largest class-score error over every anchor.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

ROUNDING_MARGIN = 10  # how many times torch's own rounding another kernel of the same arithmetic may err
INT8_MARGIN = 3  # how far a backend's own ranges may take INT8 from the twin's
CONFIDENT = 0.25


def fp64_twin(ref_rt: Any) -> Any:
    """The same TorchRuntime with its model in float64: the exact value, for rounding's purposes."""
    return _twin(ref_rt, "float64")


def _twin(ref_rt: Any, dtype: str) -> Any:
    import torch

    twin = copy.copy(ref_rt)
    twin.model, twin._dtype = copy.deepcopy(ref_rt.model).to(getattr(torch, dtype)), getattr(torch, dtype)
    return twin


def _int8_twin(ref_rt: Any, symmetric: bool = False) -> Any:
    import torch

    twin = _twin(ref_rt, "float32")

    def quantize_input(_: Any, inputs: tuple) -> tuple:
        x = inputs[0]
        if symmetric:  # signed int8 over the input's largest magnitude (ncnn's activations)
            scale = max(float(x.abs().max()) / 127, 1e-12)
            return (torch.fake_quantize_per_tensor_affine(x, scale, 0, -127, 127),)
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        scale = max((hi - lo) / 255, 1e-12)
        return (torch.fake_quantize_per_tensor_affine(x, scale, int(round(-lo / scale)), 0, 255),)

    for m in twin.model.modules():
        if isinstance(m, torch.nn.Conv2d):
            w = m.weight.data
            s = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) / 127
            m.weight.data = torch.round(w / s).clamp(-127, 127) * s
            m.register_forward_pre_hook(quantize_input)
    return twin


def rounding_tolerance(a: np.ndarray, exact: np.ndarray, floor: float, margin: float = ROUNDING_MARGIN) -> float:
    """``margin`` times the largest difference of ``a`` (a twin's output) from ``exact``, at least ``floor``.

    Measured on one coco-mini image at 320 (amd-epyc-2c-792874): torch's own float32 score rounding is 2e-6..2e-5 for
    six random-init families and 6.5e-4 for yolov9t (its boxes 0.05 px), whose LiteRT FP32 scores differed from
    torch's by 2.04e-3 on an AVX2-only EPYC: 10x its rounding, 6.5e-3, allows that; the floors (2e-3, 0.25 px) are
    the fixed tolerances the other families held on AVX2, AVX-512 and VNNI machines.
    """
    return max(floor, margin * float(np.abs(a - exact).max()))


@dataclass(frozen=True)
class Errors:
    """The two statistics of one output against a reference output."""

    box: float  # px, over the reference's confident anchors
    score: float  # over every anchor and class

    @classmethod
    def of(cls, out: np.ndarray, ref: np.ndarray) -> Errors:
        """``out`` and ``ref``: raw ``[B, 4 + nc, N]`` outputs of one input."""
        confident = ref[:, 4:].max(axis=1) >= CONFIDENT  # [B, N]
        box = np.abs(out[:, :4].astype(np.float64) - ref[:, :4]).transpose(0, 2, 1)[confident]
        score = np.abs(out[:, 4:].astype(np.float64) - ref[:, 4:])
        return cls(float(box.max()) if box.size else 0.0, float(score.max()))

    def within(self, tol: Errors) -> bool:
        """Whether both statistics are within ``tol``'s."""
        return self.box <= tol.box and self.score <= tol.score


def arithmetic(precision: str, ran_as: str) -> str:
    """The twin for a variant of ``precision`` whose record says it ran as ``ran_as``."""
    if precision == "int8":
        return "int8-symmetric" if "symmetric" in ran_as else "int8"
    if precision == "fp16":
        return "bfloat16" if "bf16" in ran_as else "float16"
    return "float32"


def tolerance(ref_rt: Any, x: np.ndarray, kind: str) -> Errors:
    """How far an output in arithmetic ``kind`` may lie from torch FP32's on input ``x`` (see the module)."""
    exact = fp64_twin(ref_rt).predict(x)
    twin = (_int8_twin(ref_rt, kind == "int8-symmetric") if kind.startswith("int8") else _twin(ref_rt, kind))
    err = Errors.of(twin.predict(x).astype(np.float64), exact)
    margin = INT8_MARGIN if kind.startswith("int8") else ROUNDING_MARGIN
    return Errors(max(0.25, margin * err.box), max(2e-3, margin * err.score))
