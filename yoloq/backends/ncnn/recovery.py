"""NCNN INT8 recovery on ncnn's own grid: GPTQ-rounded weights and a sensitivity ranking of blocks, both measured in
ncnn's runtime against the FP32 ncnn model (the teacher), on calibration images only."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.backends.base import GroupError
from yoloq.backends.ncnn import calibration, int8
from yoloq.recover.rounding import gptq_integers, patches_chw, second_moments

ROWS = 2048  # input positions per image and layer in GPTQ's second moments
HEAD_BRANCH = re.compile(r"^(model\.\d+)\.((?:one2one_)?cv[23]\.\d+)\.")


def _ncnn_round(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)  # ncnn's float2int8: half away from zero


def gptq(folder: Path, model: int8.Model, layers: list[int8.Layer], scales: dict[str, np.ndarray], bits_3x3: int,
         images: list[np.ndarray], threads: int) -> dict[str, np.ndarray]:
    """GPTQ's int8 weights for ``layers`` (regular convolutions; depthwise ones keep rounding to nearest), from
    the FP32 model's inputs to each layer on ``images``."""
    targets = [c for c in layers if c.kind == "Convolution"]
    by_blob: dict[str, list[int8.Layer]] = {}
    for c in targets:
        by_blob.setdefault(c.bottoms[0], []).append(c)
    hs: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)

    def collect(blob: str, a: np.ndarray) -> None:
        for c in by_blob[blob]:
            h = second_moments(patches_chw(a, c.kernel(), ROWS, rng))
            hs[c.name] = hs[c.name] + h if c.name in hs else h

    n = calibration.blobs(folder, list(by_blob), images, threads, collect)
    return {c.name: gptq_integers(c.weight, hs[c.name] / max(n, 1), scales[c.name], int8.qmax(c, bits_3x3),
                                  _ncnn_round).astype(np.int8) for c in targets}


def learned_integers(layers: list[int8.Layer], learned: dict[str, tuple[np.ndarray, np.ndarray | None]],
                     names: dict[str, str], scales: dict[str, np.ndarray], bits_3x3: int
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Distillation's float weights and biases (by module name) as ncnn's int8 weights on ``scales`` and float
    biases (by ncnn layer name)."""
    ints, biases = {}, {}
    for c in layers:
        w, b, *_ = learned[names[c.name]]
        top = int8.qmax(c, bits_3x3)
        ints[c.name] = np.clip(int8.round_int8(w.reshape(c.weight.shape) * scales[c.name][:, None]), -top,
                               top).astype(np.int8)
        if b is not None and c.bias is not None:
            biases[c.name] = b.astype(np.float32)
    return ints, biases


def block_of(module: str) -> str:
    """The block of a module name: ``model.K``, the head by branch (``model.23.cv2.0``)."""
    m = HEAD_BRANCH.match(module + ".")
    return f"{m.group(1)}.{m.group(2)}" if m else ".".join(module.split(".")[:2])


def _sqnr(ref: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    noise, signal = float(((ref - y) ** 2).sum()), float((ref ** 2).sum())
    return (10 * np.log10(signal / noise) if noise > 0 else float("inf")), (noise / signal) ** 0.5


def _outputs(folder: Path, images: list[np.ndarray], out: str, imgsz: int, threads: int) -> np.ndarray:
    ys = []
    calibration.blobs(folder, [out], images, threads, lambda _n, a: ys.append(a), int8_inference=True)
    y = np.stack(ys).astype(np.float64)
    y[:, :4] /= imgsz  # boxes in input pixels: divided so boxes and scores weigh alike
    return y


def rank_blocks(folder: Path, model: int8.Model, quant: dict[str, Any], modules: dict[str, str],
                images: list[np.ndarray], imgsz: int, threads: int) -> list[GroupError]:
    """Each block's int8 convolutions quantized alone (the variant's scales and weights), ranked by the SQNR of
    the raw head output against FP32 in ncnn's runtime, worst first."""
    ref = _outputs(folder, images, model.output, imgsz, threads)
    groups: dict[str, list[str]] = {}
    for name in quant:
        groups.setdefault(block_of(modules[name]), []).append(name)
    out = []
    with tempfile.TemporaryDirectory(prefix="yoloq-ncnn-rank-") as tmp:
        for group, names in groups.items():
            int8.write(model, Path(tmp), {n: quant[n] for n in names})
            db, rel = _sqnr(ref, _outputs(Path(tmp), images, model.output, imgsz, threads))
            out.append(GroupError(group, tuple(modules[n] for n in names), db, rel))
    return sorted(out, key=lambda g: g.sqnr_db)
