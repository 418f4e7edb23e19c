"""Layer sensitivity: the error each block (or layer) adds when it alone is quantized to INT8.

Measured with ONNX Runtime's quantizer on calibration (train) images, never evaluation images:
calibrate once (ranges cached), then for each group quantize only that group's nodes, run the
model, and compare its raw head output with FP32 as SQNR (signal-to-quantization-noise, dB; lower
means the group hurts more). Boxes are divided by the input size so boxes and scores weigh alike.
The ranking names what to keep in float (``float_nodes`` / ``float_patterns`` in a variant).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.config import RunConfig, VariantConfig
from yoloq.data.calibration import CalibrationSet


@dataclass(frozen=True)
class GroupError:
    """One group's result: its name, node count, output SQNR (dB) and relative error."""

    group: str
    nodes: int
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


def _sqnr(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    noise = float(((ref - out) ** 2).sum())
    signal = float((ref ** 2).sum())
    return (10 * np.log10(signal / noise) if noise > 0 else float("inf")), (noise / signal) ** 0.5


def _normalise(y: np.ndarray, imgsz: int) -> np.ndarray:
    y = y.astype(np.float64).copy()
    if y.ndim == 3 and y.shape[1] < y.shape[2]:
        y[:, :4] /= imgsz
    return y


def analyse(cfg: RunConfig, variant: VariantConfig, fp32: Path, calibration: CalibrationSet,
            granularity: str = "block", images: int = 16) -> list[GroupError]:
    """Rank groups of ``fp32`` by the output error their INT8 quantization alone introduces.

    Args:
        cfg: The run config (imgsz, threads).
        variant: The INT8 variant whose quantization settings are used (onnxruntime or openvino).
        fp32: The FP32 ONNX model.
        calibration: Calibration images; the first ``images`` are also the measurement images.
        granularity: ``block`` or ``layer``.
        images: How many calibration images to measure on.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from yoloq.backends.base import ExportContext
    from yoloq.backends.onnxruntime import _reader, _stride
    from yoloq.progress import bar

    opts = variant.options
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[opts.get("calibrate_method", "minmax")]
    act = QuantType.QInt8 if opts.get("activation_type") == "int8" else QuantType.QUInt8
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.latency.threads
    so.log_severity_level = 3
    measure = list(calibration.batches(cfg.imgsz, images))

    def outputs(path: Path) -> np.ndarray:
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        return np.concatenate([_normalise(s.run(None, {name: x})[0], cfg.imgsz) for x in measure])

    results = []
    with tempfile.TemporaryDirectory(prefix="yoloq-sens-") as tmp:
        t = Path(tmp)
        prep, cache = t / "prep.onnx", t / "ranges.json"
        quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
        import onnx

        input_name = onnx.load(str(prep), load_external_data=False).graph.input[0].name
        ctx = ExportContext(None, variant, cfg.imgsz, calibration, t)  # type: ignore[arg-type]
        reference = outputs(prep)
        groups = groups_of(prep, granularity)
        reader = _reader(ctx, input_name, opts.get("calibration_images"))
        extra = {"ActivationSymmetric": opts.get("activation_type") == "int8"}
        if method == CalibrationMethod.MinMax:
            extra["CalibStridedMinMax"] = _stride(len(reader))
        for i, (name, nodes) in enumerate(bar(list(groups.items()), desc="  sensitivity")):
            out = t / "q.onnx"
            quantize_static(str(prep), str(out), reader if i == 0 else None, quant_format=QuantFormat.QDQ,
                            per_channel=opts.get("per_channel", True), activation_type=act,
                            weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_quantize=nodes,
                            calibration_cache_path=cache, extra_options=extra)
            db, rel = _sqnr(reference, outputs(out))
            results.append(GroupError(name, len(nodes), db, rel))
    return sorted(results, key=lambda g: g.sqnr_db)


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
    rows = [{"rank": str(i + 1), "group": r.group, "nodes": str(r.nodes), "SQNR dB": f"{r.sqnr_db:.2f}",
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
    ax.barh([r.group for r in results][::-1], [r.sqnr_db for r in results][::-1], color="#1f77b4")
    ax.set_xlabel("output SQNR when only this group is INT8 (dB, lower = more sensitive)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "sensitivity.png")
    plt.close(fig)
    return table


def sensitivity_summary(results: list[GroupError]) -> dict[str, Any]:
    """The worst groups, for a one-line summary."""
    return {"worst": [(r.group, round(r.sqnr_db, 2)) for r in results[:5]]}
