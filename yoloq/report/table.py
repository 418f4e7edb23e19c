"""Records to tables: the variant table and the report's smaller tables, as rows of strings."""

from __future__ import annotations

from typing import Any

from yoloq.budget import label
from yoloq.machine_load import flag_threshold
from yoloq.provenance import describe
from yoloq.records import Record, reference_of, same_backend, same_place

COLUMNS = ("variant", "ran as", "status", "mAP50-95", "mAP50", "drop [95% CI]", "% of ref", "agrees", "p50 ms",
           "p90 ms", "p99 ms", "FPS", "x ref", "x fp32", "x fp16", "size MB", "compr.", "budget", "reason")
TERMINAL = ("variant", "ran as", "status", "mAP50-95", "drop [95% CI]", "% of ref", "agrees", "p50 ms", "p90 ms",
            "x fp32", "size MB", "budget", "reason")


def _fmt(x: Any, nd: int, suffix: str = "") -> str:
    return "" if x is None else f"{x:.{nd}f}{suffix}"


def _ci_text(m: dict[str, Any]) -> str:
    ci = m.get("map_drop_ci")
    if not ci:
        return ""
    star = "*" if ci["significant"] else ""
    return f"{ci['drop']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]{star}"


def _branch(r: Record) -> str:
    """The head branch, when it is not the plain one-to-many + NMS: NMS-free, or a format's fallback."""
    if r.end2end:
        return ", NMS-free head"
    return ", NMS (one-to-one branch not carried)" if "cannot carry" in r.head.get("reason", "") else ""


def rows(records: list[Record]) -> list[dict[str, str]]:
    """One display row per record (strings), against the reference and the same backend's FP32."""
    ref = reference_of(records)
    ref_map = ref.map if ref else None
    ref_p50 = ref.p50 if ref else None
    out = []
    for r in records:
        m, lat = r.metrics, r.latency
        base = same_backend(records, r, "fp32") or ref
        part = r.pair.get("images") if r.pair.get("role") == "emulated" else None  # scored on fewer images
        keep = 100.0 * m["map50_95"] / ref_map if ref_map and m.get("map50_95") is not None and not part else None
        p50 = lat.get("p50_ms")
        sp = r.speedup  # computed once, by finalize, and stored in the record
        base_size = base.size_mb if base else None
        out.append({
            "variant": r.name + (" (ref)" if ref is not None and r.name == ref.name else ""),
            "ran as": r.runtime.get("precision_ran", "") + _branch(r),
            "status": r.status,
            "mAP50-95": _fmt(m.get("map50_95"), 4), "mAP50": _fmt(m.get("map50"), 4),
            "drop [95% CI]": _ci_text(m), "% of ref": _fmt(keep, 1),
            "agrees": _fmt((m.get("agreement") or {}).get("map50_95"), 3),
            "p50 ms": _fmt(p50, 2) + ("!" if (lat.get("outside_load") or {}).get("flagged") else ""),
            "p90 ms": _fmt(lat.get("p90_ms"), 2), "p99 ms": _fmt(lat.get("p99_ms"), 2),
            "FPS": _fmt(lat.get("throughput_fps"), 1),
            "x ref": _fmt(ref_p50 / p50 if p50 and ref_p50 and same_place(ref, r) else None, 2, "x"),
            "x fp32": _fmt(sp.get("vs_fp32"), 2, "x"),
            "x fp16": _fmt(sp.get("vs_fp16") if r.precision != "fp16" else None, 2, "x"),
            "size MB": _fmt(r.size_mb, 2),
            "compr.": _fmt(r.size_mb / base_size if r.size_mb and base_size else None, 2, "x"),
            "budget": label(r.budget),
            "reason": (r.reason or (f"emulated on the first {part} images: compared with its x86 record on those, "
                                    "below" if part else "") or r.extra.get("not_timed") or "")[:160],
        })
    return out


def markdown_table(table: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A GitHub-flavoured markdown table, padded so it also reads in a terminal."""
    widths = {c: max([len(c), *(len(t[c]) for t in table)]) for c in columns}

    def line(vals: list[str]) -> str:
        return "| " + " | ".join(v.ljust(widths[c]) for c, v in zip(columns, vals)) + " |"

    head = [line(list(columns)), "| " + " | ".join("-" * widths[c] for c in columns) + " |"]
    return "\n".join(head + [line([t[c] for c in columns]) for t in table])


def per_class_losses(records: list[Record], ref: Record | None, top: int = 5) -> list[dict[str, str]]:
    """For each ok non-reference variant, the ``top`` classes whose AP50-95 falls most against the reference."""
    if not ref:
        return []
    base = ref.metrics.get("per_class", {})
    out = []
    for r in records:
        if not r.ok or r.name == ref.name:
            continue
        pc = r.metrics.get("per_class", {})
        drops = [(d, c) for d, c in sorted(((base[c] - pc.get(c, 0.0), c) for c in base), reverse=True)[:top]
                 if d > 5e-4]
        out.append({"variant": r.name,
                    "classes that lose most (AP50-95 ref -> variant)": ", ".join(
                        f"{c} {base[c]:.3f}->{pc.get(c, 0.0):.3f}" for _, c in drops) or "none loses AP"})
    return out


def size_table(records: list[Record]) -> list[dict[str, str]]:
    """AP small / medium / large per ok variant."""
    return [{"variant": r.name, "AP small": _fmt(r.metrics.get("map_small"), 4),
             "AP medium": _fmt(r.metrics.get("map_medium"), 4), "AP large": _fmt(r.metrics.get("map_large"), 4)}
            for r in records if r.ok]


def environment(records: list[Record]) -> list[str]:
    """Lines describing the machine, versions, calibration, dataset and config hash."""
    if not records:
        return []
    r = next((x for x in records if x.ok), records[-1])
    cal, ds = r.calibration, r.dataset
    return [
        f"model: {r.model.get('name')} (sha256 {str(r.model.get('sha256'))[:12]}), imgsz {r.imgsz}",
        f"dataset: {ds.get('name')}/{ds.get('split')}, {ds.get('images')} images evaluated",
        f"calibration: {', '.join(cal.get('sources', []))}; {cal.get('images')} images, seed {cal.get('seed')}, "
        f"list sha256 {str(cal.get('sha256'))[:12]}",
        f"machine: {describe(r.machine)} (id {r.machine.get('id', '?')})",
        "versions: " + ", ".join(f"{k} {v}" for k, v in r.versions.items()),
        f"config hash: {r.config_hash}",
    ]


def notes(records: list[Record], ref: Record | None) -> list[str]:
    """The lines that say how to read the variant table."""
    cis = [r.metrics["map_drop_ci"] for r in records if r.ok and r.metrics.get("map_drop_ci")]
    out = []
    if ref:
        out.append(f"Reference: {ref.name} (mAP50-95 {ref.map:.4f}). 'drop' is reference minus variant mAP50-95 "
                   f"(positive = lost).")
    if cis:
        n_img = ref.metrics.get("images") if ref else None
        out.append(f"95% intervals: paired bootstrap, {cis[0]['resamples']} resamples of the {n_img} evaluation "
                   f"images (seed {cis[0]['seed']}); * marks a drop whose interval excludes 0 (significant).")
    agree = next((r.metrics["agreement"] for r in records if r.ok and r.metrics.get("agreement")), None)
    if agree:
        out.append(f"agrees: mAP50-95 of the variant's detections scored against the reference's own detections "
                   f"with score >= {agree['conf']} ({agree['boxes']} boxes) as ground truth: 1.0 reproduces them; "
                   f"it measures what quantization moved, with far less image-to-image noise than mAP.")
    out.append("x ref / x fp32 / x fp16: p50 speed-up against the reference and against the same backend's "
               "FP32 and FP16; compr.: size against the same backend's FP32.")
    loaded = [r for r in records if r.ok and (r.latency.get("outside_load") or {}).get("flagged")]
    if loaded:
        worst = max(r.latency["outside_load"]["share"] for r in loaded)
        out.append(f"p50 ms marked !: timed while other processes took more than {100 * flag_threshold():.0f}% of the "
                   f"machine's CPU (up to {100 * worst:.0f}%; the record's latency.outside_load): {len(loaded)} "
                   f"variant(s); time them again on a quiet machine (yoloq run again re-times, nothing else).")
    nodes = {(r.execution.get("node") or "")[:8] for r in records if r.ok and r.latency}
    if len(nodes) > 1:
        out.append(f"Timed on {len(nodes)} cluster nodes (each record's execution.node): a speed-up is shown only "
                   f"between variants timed on one node.")
    return out


def qat_table(records: list[Record]) -> list[dict[str, str]]:
    """QAT against PTQ on the same backend: mAP of each, PTQ - QAT with its paired 95% interval."""
    by_name = {r.name: r for r in records}
    out = []
    for r in records:
        c = r.metrics.get("qat_vs_ptq")
        if not c or c.get("ptq") not in by_name:
            continue
        out.append({"QAT variant": r.name, "PTQ variant": c["ptq"],
                    "PTQ mAP50-95": _fmt(by_name[c["ptq"]].map, 4),
                    "QAT mAP50-95": _fmt(r.map, 4),
                    "PTQ - QAT [95% CI]": f"{c['drop']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"
                                          + ("*" if c.get("significant") else "")})
    return out


def explain_table(records: list[Record]) -> list[dict[str, str]]:
    """INT8 variants explained (``yoloq explain``): int8 share of compute and time, what is not int8."""
    out = []
    for r in records:
        e = r.explain
        if not e:
            continue
        top = sorted(e.get("not_int8", {}).items(), key=lambda kv: -(kv[1]["time_ms"] or kv[1]["macs_share"]))
        macs = e.get("int8_macs_share")  # None where the runtime's profiler gives no shapes
        out.append({"variant": r.name, "int8 MACs": _fmt(None if macs is None else 100 * macs, 1, "%"),
                    "int8 time": _fmt(None if e.get("int8_time_share") is None else 100 * e["int8_time_share"], 1, "%"),
                    "model ms": _fmt(e.get("model_ms"), 1),
                    "not int8 (layers, time ms)": "; ".join(f"{why}: {g['layers']}, {g['time_ms']:.1f}"
                                                            for why, g in top[:3]),
                    "details": e.get("file", "")})
    return out
