"""``yoloq explain RUN_DIR VARIANT``: what an INT8 variant runs in int8, what falls back to float and why,
and where its time goes, from the runtime's own executed graph (see each backend's ``explain``).

The summary: per precision the layers, their share of compute (MACs) and of time; the float layers
grouped by reason (kept by the variant's scope, a conversion the runtime inserted, an op with no int8
kernel, float ops run in the CPU's bf16); the op types whose time changed most against the same
backend's FP32 variant; and, where ``yoloq sensitivity`` was run for the variant, its per-layer error.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from yoloq.artifacts import cached_artifact
from yoloq.backends.base import LayerRun
from yoloq.backends.registry import get_backend
from yoloq.config import parse_config
from yoloq.data import load_split
from yoloq.errors import DataError, YoloqError
from yoloq.preprocess import prepare, read_image
from yoloq.provenance import describe, machine
from yoloq.records import Record, RecordStore, same_backend, write_atomic

FLOAT = ("fp32", "bf16", "fp16")


def _layers(run_dir: Path, rec: Record, batch: np.ndarray, threads: int, runs: int) -> list[LayerRun]:
    art = cached_artifact(run_dir / "artifacts" / rec.name, rec.key)
    if art is None:
        raise YoloqError(f"{rec.name}: its export is not in {run_dir}/artifacts (committed runs carry no models); "
                         f"run 'yoloq run' for this config on this machine first")
    try:
        return get_backend(rec.format).explain(art, batch, threads, runs)
    except NotImplementedError as e:
        raise YoloqError(str(e)) from None


def _input(run_dir: Path) -> tuple[np.ndarray, int]:
    """One real evaluation image of the run, letterboxed, and the run's thread count."""
    stored = run_dir / "config.yaml"
    if not stored.is_file():
        raise YoloqError(f"{run_dir} has no config.yaml (the run's own config names the images to profile on); "
                         f"give the folder 'yoloq run' wrote")
    cfg = parse_config(yaml.safe_load(stored.read_text()), Path.cwd())
    for s in load_split(cfg.data, Path.cwd()).samples:
        try:
            return prepare([read_image(s.path)], cfg.imgsz)[0], cfg.latency.threads
        except DataError:
            continue
    raise YoloqError(f"no readable evaluation image for {run_dir}")


def _kept(rec: Record) -> list[str]:
    return [k.split(":", 1)[-1] for k in rec.artifact_info.get("kept_float") or []]


def reason(layer: LayerRun, kept: list[str]) -> str:
    """Why a layer is not int8, in words."""
    base = re.sub(r"(/WithoutBiases|_quant|_output_0_nchwc|_nchwc)$", "", layer.name)
    if layer.precision == "convert":
        return "inserted by the runtime: int8 <-> float conversion or layout reorder"
    if any(base == k or layer.name.endswith(k) or base.startswith(k + "/") for k in kept):
        return ("kept in float by the variant's scope (keep_head_float / keep_attention_float / keep_stem_float / "
                "float_nodes / float_blocks)")
    if layer.precision.startswith("int"):  # e.g. "int4 weights", "int16 activations"
        return "quantized at another bit width by the target's own rules (mixed precision, 16-bit where it keeps it)"
    if layer.precision == "bf16":
        return "a float op the runtime runs in bf16 (the CPU's inference precision), no int8 kernel"
    return f"no int8 kernel for this op in the quantized graph ({layer.op.split(' ')[0]})"


def _op_family(op: str) -> str:
    op = op.split(" ")[0]
    return re.sub(r"^(QLinear|Nhwc|Fused)+", "", op).replace("Integer", "")


def summarise(layers: list[LayerRun], kept: list[str]) -> dict[str, Any]:
    """Shares by precision, and the float layers grouped by reason."""
    macs = sum(x.macs for x in layers) or 1
    timed = any(x.time_ms is not None for x in layers)
    total_t = sum(x.time_ms or 0.0 for x in layers) or 1.0
    by: dict[str, dict[str, float]] = {}
    for x in layers:
        b = by.setdefault(x.precision, {"layers": 0, "macs": 0, "time_ms": 0.0})
        b["layers"] += 1
        b["macs"] += x.macs
        b["time_ms"] += x.time_ms or 0.0
    groups: dict[str, dict[str, Any]] = {}
    for x in layers:
        if x.precision == "int8":
            continue
        g = groups.setdefault(reason(x, kept), {"layers": 0, "macs": 0, "time_ms": 0.0, "examples": []})
        g["layers"] += 1
        g["macs"] += x.macs
        g["time_ms"] += x.time_ms or 0.0
        if len(g["examples"]) < 3 and (x.macs or len(g["examples"]) < 1):
            g["examples"].append(f"{'/'.join(x.name.split('/')[-2:])} [{x.op.split(' ')[0]}, {x.precision}]")
    counted = any(x.macs for x in layers)  # a profiler without shapes (ExecuTorch's) counts none
    return {"macs": macs, "time_ms": total_t if timed else None, "by_precision": by, "float_groups": groups,
            "int8_macs_share": by.get("int8", {}).get("macs", 0) / macs if counted else None,
            "int8_time_share": by.get("int8", {}).get("time_ms", 0.0) / total_t if timed else None}


def time_by_op(layers: list[LayerRun]) -> dict[str, float]:
    """Time per op family (QLinearConv and Conv are both Conv), ms per inference."""
    out: dict[str, float] = {}
    for x in layers:
        if x.time_ms is not None:
            out[_op_family(x.op)] = out.get(_op_family(x.op), 0.0) + x.time_ms
    return out


def _sensitivity(run_dir: Path, name: str) -> list[dict[str, str]]:
    for g in ("layer", "block"):
        f = run_dir / f"sensitivity-{name}-{g}" / "sensitivity.csv"
        if f.is_file():
            with f.open() as fh:
                return list(csv.DictReader(fh))[:10]
    return []


def explain(run_dir: Path, name: str, runs: int = 5) -> str:
    """The explanation of variant ``name`` of the run in ``run_dir``, as markdown (also written beside it).

    Raises:
        YoloqError: Unknown variant, a variant that did not run, or its export missing here.
    """
    store = RecordStore(run_dir)
    records = store.all()
    rec = store.get(name)
    if rec is None:
        raise YoloqError(f"no variant '{name}' in {run_dir}; variants: {', '.join(r.name for r in records)}")
    if not rec.ok:
        raise YoloqError(f"{name} did not run ({rec.status}: {rec.reason})")
    batch, threads = _input(run_dir)
    layers = _layers(run_dir, rec, batch, threads, runs)
    s = summarise(layers, _kept(rec))
    lines = [f"# What {name} runs", "", f"Measured on {describe(machine())}, {threads} threads, one real evaluation "
             f"image, {runs} profiled inferences (model only: no pre- or postprocessing).", ""]
    t = s["time_ms"]
    share = (f"int8 share: {s['int8_macs_share']:.1%} of {s['macs'] / 1e9:.2f} GMACs" if s["int8_macs_share"]
             is not None else "int8 share (this runtime's profiler gives no shapes: no MACs)") + \
        (f", {s['int8_time_share']:.1%} of {t:.1f} ms" if t else " (this runtime has no per-op profiler: no times)")
    lines += [share, ""]
    mem = (rec.artifact_info or {}).get("sensor_memory") or {}
    if mem:  # a camera NPU's own converter says what the model takes of the chip's memory
        lines += [f"On the sensor: {mem.get('usage')} of its {mem.get('available')} (model {mem.get('model')}, "
                  f"activations {mem.get('runtime')}; the converter's memory report: "
                  f"{'fits' if mem.get('fits') else 'does not fit'})", ""]
    lines += ["| precision | layers | MACs | time ms | time |", "|---|---|---|---|---|"]
    for p, b in sorted(s["by_precision"].items(), key=lambda kv: -kv[1]["macs"]):
        lines.append(f"| {p} | {b['layers']} | {b['macs'] / s['macs']:.1%} | "
                     f"{b['time_ms']:.2f} | {b['time_ms'] / t:.1%} |" if t else
                     f"| {p} | {b['layers']} | {b['macs'] / s['macs']:.1%} | - | - |")
    lines += ["", "Layers not in int8, by reason:", "", "| reason | layers | MACs | time ms | e.g. |",
              "|---|---|---|---|---|"]
    for why, g in sorted(s["float_groups"].items(), key=lambda kv: -(kv[1]["time_ms"] or kv[1]["macs"])):
        lines.append(f"| {why} | {g['layers']} | {g['macs'] / s['macs']:.1%} | "
                     f"{g['time_ms']:.2f} | " if t else f"| {why} | {g['layers']} | {g['macs'] / s['macs']:.1%} | - | ")
        lines[-1] += f"{'; '.join(g['examples'])} |"
    ref = same_backend(records, rec, "fp32")
    if t and ref is not None and ref.ok:
        try:
            ref_t = time_by_op(_layers(run_dir, ref, batch, threads, runs))
        except YoloqError:
            ref_t = {}
        mine = time_by_op(layers)
        ops = sorted(set(mine) | set(ref_t), key=lambda o: -abs(mine.get(o, 0.0) - ref_t.get(o, 0.0)))[:8]
        lines += ["", f"Biggest time differences against {ref.name} (ms per inference, by op type):", "",
                  f"| op | {name} | {ref.name} | difference |", "|---|---|---|---|"]
        lines += [f"| {o} | {mine.get(o, 0.0):.2f} | {ref_t.get(o, 0.0):.2f} | "
                  f"{mine.get(o, 0.0) - ref_t.get(o, 0.0):+.2f} |" for o in ops]
        lines += ["", f"Model time: {sum(mine.values()):.1f} ms against {sum(ref_t.values()):.1f} ms "
                      f"({sum(ref_t.values()) / max(sum(mine.values()), 1e-9):.2f}x); the record's end-to-end p50 "
                      f"ratio ({(rec.speedup or {}).get('vs_fp32', 0):.2f}x) adds pre- and postprocessing."]
    sens = _sensitivity(run_dir, name)
    lines += ["", "Per-layer INT8 error (yoloq sensitivity, each layer alone in int8, worst first):", ""]
    if sens:
        keys = list(sens[0])
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in sens]
    else:
        lines.append(f"not measured for this run: `yoloq sensitivity CONFIG --variant {name} --granularity layer "
                     f"--out {run_dir}` writes it where explain finds it.")
    text = "\n".join(lines) + "\n"
    write_atomic(run_dir / f"explain-{name}.md", text)
    rec.explain = {"machine": machine()["id"], "int8_macs_share": None if s["int8_macs_share"] is None else
                   round(s["int8_macs_share"], 4),
                   "int8_time_share": None if s["int8_time_share"] is None else round(s["int8_time_share"], 4),
                   "model_ms": None if t is None else round(t, 2), "gmacs": round(s["macs"] / 1e9, 3),
                   "not_int8": {why: {"layers": g["layers"], "macs_share": round(g["macs"] / s["macs"], 4),
                                      "time_ms": round(g["time_ms"], 2)} for why, g in s["float_groups"].items()},
                   "file": f"explain-{name}.md"}
    store.save()  # the summary is the record's, so reports show it
    return text
