"""Records to tables: ``summary.csv``, ``report.md`` and the table printed at the end of a run."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from yoloq.records import load_records, write_atomic

COLUMNS = ("variant", "format", "precision", "ran as", "status", "mAP50-95", "mAP50", "% of ref",
           "p50 ms", "p90 ms", "p99 ms", "FPS", "size MB", "reason")


def _fmt(x: Any, nd: int) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def reference_of(records: list[dict[str, Any]], name: str | None = None) -> dict[str, Any] | None:
    """The reference record: the one named, else torch FP32, else the first ok record."""
    ok = [r for r in records if r.get("status") == "ok"]
    for r in ok:
        if (name and r["name"] == name) or (not name and r["format"] == "torch" and r["precision"] == "fp32"):
            return r
    return ok[0] if ok and not name else None


def rows(records: list[dict[str, Any]], reference: str | None = None) -> list[dict[str, str]]:
    """One display row per record, with the share of the reference's mAP50-95 kept."""
    ref = reference_of(records, reference)
    ref_map = (ref or {}).get("metrics", {}).get("map50_95")
    out = []
    for r in records:
        m, lat = r.get("metrics") or {}, r.get("latency") or {}
        keep = (100.0 * m["map50_95"] / ref_map) if ref_map and m.get("map50_95") is not None else None
        out.append({
            "variant": r["name"] + (" (ref)" if ref is not None and r["name"] == ref["name"] else ""),
            "format": r["format"], "precision": r["precision"],
            "ran as": (r.get("runtime") or {}).get("precision_ran", ""),
            "status": r["status"],
            "mAP50-95": _fmt(m.get("map50_95"), 4), "mAP50": _fmt(m.get("map50"), 4), "% of ref": _fmt(keep, 1),
            "p50 ms": _fmt(lat.get("p50_ms"), 2), "p90 ms": _fmt(lat.get("p90_ms"), 2),
            "p99 ms": _fmt(lat.get("p99_ms"), 2), "FPS": _fmt(lat.get("throughput_fps"), 1),
            "size MB": _fmt(r.get("size_mb"), 2), "reason": (r.get("reason") or "")[:120],
        })
    return out


def markdown_table(table: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A GitHub-flavoured markdown table (aligned, so it reads in a terminal too)."""
    widths = {c: max([len(c), *(len(t[c]) for t in table)]) for c in columns}
    line = lambda vals: "| " + " | ".join(v.ljust(widths[c]) for c, v in zip(columns, vals)) + " |"  # noqa: E731
    head = [line(columns), "| " + " | ".join("-" * widths[c] for c in columns) + " |"]
    return "\n".join(head + [line([t[c] for c in columns]) for t in table])


def write_summary(run_dir: Path, reference: str | None = None) -> str:
    """Write ``summary.csv`` and ``report.md`` in ``run_dir`` from its records; return the markdown table."""
    records = load_records(run_dir / "records.jsonl")
    table = rows(records, reference)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS))
    w.writeheader()
    w.writerows(table)
    write_atomic(run_dir / "summary.csv", buf.getvalue())
    md = markdown_table(table)
    env = _environment(records)
    write_atomic(run_dir / "report.md", f"# yoloq run: {run_dir.name}\n\n{md}\n\n{env}\n")
    return md


def _environment(records: list[dict[str, Any]]) -> str:
    if not records:
        return ""
    r = records[-1]
    mach, cal, ds = r.get("machine", {}), r.get("calibration", {}), r.get("dataset", {})
    vers = ", ".join(f"{k} {v}" for k, v in (r.get("versions") or {}).items())
    isa = ", ".join(k for k in ("avx512_vnni", "avx512_bf16", "amx") if mach.get(k)) or "none of VNNI/BF16/AMX"
    return "\n".join([
        "## Environment",
        f"- model: {r.get('model', {}).get('name')} (sha256 {str(r.get('model', {}).get('sha256'))[:12]}), "
        f"imgsz {r.get('imgsz')}",
        f"- dataset: {ds.get('name')}/{ds.get('split')}, {ds.get('images')} images evaluated",
        f"- calibration: {', '.join(cal.get('sources', []))}; {cal.get('images')} images, seed {cal.get('seed')}, "
        f"list sha256 {str(cal.get('sha256'))[:12]}",
        f"- machine: {mach.get('cpu')}, {mach.get('cores')} cores ({isa}); GPU: {mach.get('gpu') or 'none'}",
        f"- versions: {vers}",
        f"- config hash: {r.get('config_hash')}",
    ])
