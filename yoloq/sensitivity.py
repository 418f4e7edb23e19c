"""Layer sensitivity: the error each block (or layer) adds when it alone is quantized to INT8.

Measured with ONNX Runtime's quantizer on calibration (train) images, never evaluation images:
calibrate once (ranges cached), then for each group quantize only that group's nodes, run the
model, and compare its raw head output with FP32 as SQNR (signal-to-quantization-noise, dB; lower
means the group hurts more). Boxes are divided by the input size so boxes and scores weigh alike.
The ranking names what to keep in float (``float_nodes`` / ``float_patterns`` in a variant), and
drives accuracy control.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from yoloq.config import RunConfig, VariantConfig
from yoloq.data.calibration import CalibrationSet


@dataclass(frozen=True)
class GroupError:
    """One group's result: its name, its node names, output SQNR (dB) and relative error."""

    group: str
    nodes: tuple[str, ...]
    sqnr_db: float
    rel_error: float


def groups_of(onnx_path: Path, granularity: str = "block") -> dict[str, list[str]]:
    """Group an Ultralytics ONNX graph's nodes by block (``/model.K/``, the head by branch) or by conv layer."""
    import onnx

    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    groups: dict[str, list[str]] = {}
    for n in nodes:
        if granularity == "layer":
            if n.op_type == "Conv":
                groups[n.name] = [n.name]
            continue
        m = re.match(r"^/?(model\.\d+)/(cv[23]\.\d+|one2one_cv[23]\.\d+|dfl)?", n.name)
        if m is None:
            continue
        key = m.group(1) + (f"/{m.group(2)}" if m.group(2) else "")
        groups.setdefault(key, []).append(n.name)
    return groups


def _normalise(y: np.ndarray, imgsz: int) -> np.ndarray:
    y = y.astype(np.float64).copy()
    if y.ndim == 3 and y.shape[1] < y.shape[2]:
        y[:, :4] /= imgsz
    return y


def session_outputs(path: Path, batches: list[np.ndarray], imgsz: int, threads: int) -> np.ndarray:
    """Run an ONNX model on ``batches`` and return the stacked, box-normalised raw outputs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([_normalise(s.run(None, {name: x})[0], imgsz) for x in batches])


def rank_groups(prep: Path, options: Mapping[str, Any], cache: Path, batches: list[np.ndarray], imgsz: int,
                threads: int, granularity: str = "block", skip: set[str] | None = None) -> list[GroupError]:
    """Quantize each group alone with the cached ranges and rank by output SQNR against FP32 (worst first)."""
    from yoloq.backends.onnxruntime import quantize_file
    from yoloq.progress import bar

    reference = session_outputs(prep, batches, imgsz, threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="yoloq-rank-") as tmp:
        out = Path(tmp) / "q.onnx"
        for name, nodes in bar(list(groups_of(prep, granularity).items()), desc="  sensitivity"):
            nodes = [n for n in nodes if n not in (skip or set())]
            if not nodes:
                continue
            quantize_file(prep, out, options, None, cache, only=nodes)
            y = session_outputs(out, batches, imgsz, threads)
            noise, signal = float(((reference - y) ** 2).sum()), float((reference ** 2).sum())
            db = 10 * np.log10(signal / noise) if noise > 0 else float("inf")
            results.append(GroupError(name, tuple(nodes), db, (noise / signal) ** 0.5))
    return sorted(results, key=lambda g: g.sqnr_db)


def analyse(cfg: RunConfig, variant: VariantConfig, fp32: Path, calibration: CalibrationSet,
            granularity: str = "block", images: int = 16) -> list[GroupError]:
    """Rank the groups of ``fp32`` by the output error their INT8 quantization alone introduces.

    Ranges come from the whole calibration set (as the variant would use it); the error is measured on
    its first ``images`` images.
    """
    from yoloq.backends.base import ExportContext
    from yoloq.backends.onnxruntime import _reader, prepare_model, quantize_file

    with tempfile.TemporaryDirectory(prefix="yoloq-sens-") as tmp:
        t = Path(tmp)
        prep, cache = t / "prep.onnx", t / "ranges.json"
        input_name = prepare_model(fp32, prep)
        ctx = ExportContext(None, variant, cfg.imgsz, calibration, t)  # type: ignore[arg-type]
        quantize_file(prep, t / "full.onnx", variant.options, _reader(ctx, input_name,
                      variant.options.get("calibration_images")), cache)  # computes and caches the ranges
        batches = list(calibration.batches(cfg.imgsz, images))
        return rank_groups(prep, variant.options, cache, batches, cfg.imgsz, cfg.latency.threads, granularity)


def write_sensitivity(results: list[GroupError], out_dir: Path, title: str) -> str:
    """Write ``sensitivity.md``, ``sensitivity.csv`` and ``sensitivity.png``; return the markdown table."""
    import csv
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from yoloq.records import write_atomic
    from yoloq.report import markdown_table

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"rank": str(i + 1), "group": r.group, "nodes": str(len(r.nodes)), "SQNR dB": f"{r.sqnr_db:.2f}",
             "rel. error": f"{r.rel_error:.4f}"} for i, r in enumerate(results)]
    table = markdown_table(rows, ("rank", "group", "nodes", "SQNR dB", "rel. error"))
    write_atomic(out_dir / "sensitivity.md", f"# {title}\n\nLower SQNR = quantizing this group alone "
                 f"hurts the output more (measured on calibration images only).\n\n{table}\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_atomic(out_dir / "sensitivity.csv", buf.getvalue())
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * len(results))), dpi=100)
    finite = [r.sqnr_db for r in results if np.isfinite(r.sqnr_db)] or [0.0]
    cap = max(finite) + 5  # groups with nothing to quantize (inf dB) drawn at the right edge
    ax.barh([r.group for r in results][::-1], [min(r.sqnr_db, cap) for r in results][::-1], color="#1f77b4")
    ax.set_xlabel("output SQNR when only this group is INT8 (dB, lower = more sensitive)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "sensitivity.png")
    plt.close(fig)
    return table
