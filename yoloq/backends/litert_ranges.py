"""LiteRT INT8 activation ranges: how per-image ranges combine over the calibration images (ai-edge-quantizer's
calibrator with yoloq's update functions)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _f32(qsv: dict[str, Any]) -> dict[str, Any]:
    return {k: (np.asarray(v, np.float32) if k in ("min", "max") else v) for k, v in qsv.items()}


def mean_update(qsv: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Running mean of per-image min/max in float32 (the count rides along under ``_n``; stripped afterwards)."""
    if not qsv:
        return dict(_f32(new), _n=1)
    qsv, new = _f32(qsv), _f32(new)
    n = qsv.get("_n", 1)
    return {"min": (qsv["min"] * n + new["min"]) / (n + 1), "max": (qsv["max"] * n + new["max"]) / (n + 1),
            "_n": n + 1}


def extreme_update(qsv: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Global min and max over all images."""
    if not qsv:
        return _f32(new)
    qsv, new = _f32(qsv), _f32(new)
    return {"min": np.minimum(qsv["min"], new["min"]), "max": np.maximum(qsv["max"], new["max"])}


def all_update(qsv: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Every image's min and max kept (for a quantile over images, taken at the end)."""
    new = _f32(new)
    if not qsv:
        return {"_mins": [new["min"]], "_maxs": [new["max"]]}
    if "_mins" not in qsv:  # the first image, stored by the calibrator as it came
        qsv = {"_mins": [_f32(qsv)["min"]], "_maxs": [_f32(qsv)["max"]]}
    return {"_mins": qsv["_mins"] + [new["min"]], "_maxs": qsv["_maxs"] + [new["max"]]}


def quantile(qsv: dict[str, Any], q: float) -> dict[str, Any]:
    """The ``q`` quantile over images of the per-image maxima, and the ``1 - q`` one of the minima."""
    if "_mins" not in qsv:
        return _f32(qsv)
    return {"min": np.quantile(np.stack(qsv["_mins"]), 1 - q, axis=0).astype(np.float32),
            "max": np.quantile(np.stack(qsv["_maxs"]), q, axis=0).astype(np.float32)}


# ai-edge-quantizer's range filter for activations (its ``min_max_calibrate`` ignores values beyond it)
VALID_RANGE = 3e38


def calibrate(qt: Any, fp32: Path, data: dict[str, list[dict[str, np.ndarray]]], method: str) -> dict[str, Any]:
    """Activation ranges for ai-edge-quantizer, combined over the images as ``method`` says.

    "mean" and "minmax" run the quantizer's profiler-based calibration (TFLite's C++ interpreter tracks
    every tensor's min and max while it runs): about 4x faster than its default, which copies every
    tensor to Python, and the same ranges, so the same model, byte for byte (checked on YOLO11n). A
    range it cannot give as the default would (an infinite padding value reaching a tensor) falls back
    to the default mode.
    """
    if method == "ema":
        return qt.calibrate(data)
    from ai_edge_quantizer import calibrator, recipe_manager

    rm = recipe_manager.RecipeManager()  # the recipe the quantizer holds (its public copy)
    rm.load_quantization_recipe(qt.get_quantization_recipe())
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    # the default mode's ranges are shaped (1,) * the tensor's rank, and the quantizer reads that shape
    rank = {t.name.decode() if isinstance(t.name, bytes) else t.name: len(t.shape)
            for g in fu.read_model(str(fp32)).subgraphs for t in g.tensors}
    update = {"mean": mean_update, "minmax": extreme_update}.get(method, all_update)
    share = float(method[1:]) / 100 if method.startswith("p") else None
    result: dict[str, Any] = {}
    for mode in (calibrator.CalibrationMode.CALIBRATION_PROFILER_BASED,
                 calibrator.CalibrationMode.CALIBRATION_PRESERVE_ALL_TENSORS):
        calib = calibrator.Calibrator(fp32.read_bytes(), num_threads=16, mode=mode, qsv_update_func=update)
        calib.calibrate(data, rm)
        qsvs = {name: quantile(v, share) if share is not None else _f32(v)
                for name, v in calib.get_model_qsvs().items()}
        result = {name: {k: np.reshape(v, (1,) * rank.get(name, np.ndim(v))) for k, v in qsv.items() if k != "_n"}
                  for name, qsv in qsvs.items()}
        if all(np.all(np.abs(q[k]) < VALID_RANGE) for q in result.values() for k in ("min", "max")):
            break
    return result


@contextlib.contextmanager
def quiet_bars() -> Iterator[None]:
    """Silence ai-edge-quantizer's progress bars (one tqdm update per tensor per image: tens of
    thousands of lines in a log). tqdm reads ``TQDM_DISABLE`` only at import, so stderr is muted."""
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
        yield
