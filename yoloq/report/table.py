"""Records to what people read: the variant table, ``summary.csv``, ``report.md`` and ``report.html``.

Everything here is computed from ``records.jsonl`` (and the run's ``config.yaml`` for the reference name).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from yoloq.records import load_records, write_atomic

COLUMNS = ("variant", "ran as", "status", "mAP50-95", "mAP50", "drop [95% CI]", "% of ref", "p50 ms", "p90 ms",
           "p99 ms", "FPS", "x ref", "x fp32", "x fp16", "size MB", "compr.", "budget", "reason")
TERMINAL = ("variant", "ran as", "status", "mAP50-95", "drop [95% CI]", "% of ref", "p50 ms", "p90 ms", "x fp32",
            "size MB", "budget", "reason")


def _fmt(x: Any, nd: int, suffix: str = "") -> str:
    return "" if x is None else f"{x:.{nd}f}{suffix}"


def reference_of(records: list[dict[str, Any]], name: str | None = None) -> dict[str, Any] | None:
    """The reference record: the one named, else torch FP32, else the first ok record."""
    ok = [r for r in records if r.get("status") == "ok"]
    if name:
        return next((r for r in ok if r["name"] == name), None)
    return next((r for r in ok if r["format"] == "torch" and r["precision"] == "fp32"), ok[0] if ok else None)


def same_backend(records: list[dict[str, Any]], r: dict[str, Any], precision: str) -> dict[str, Any] | None:
    """The ok ``precision`` record of ``r``'s format on ``r``'s device (plain names first: the sweep's
    extra FP32 variants are not the base)."""
    found = [x for x in records if x.get("status") == "ok" and x["format"] == r["format"]
             and x["precision"] == precision and x.get("device") == r.get("device")]
    return next((x for x in found if x["name"] == f"{r['format']}-{precision}"), found[0] if found else None)


def same_backend_fp32(records: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, Any] | None:
    """The ok FP32 record of ``r``'s format on ``r``'s device (the base for speed-up and compression)."""
    return same_backend(records, r, "fp32")


def speedup(records: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, Any]:
    """p50 speed-up of ``r`` against its backend's FP32 and FP16 (OpenVINO's FP16 runs BF16 on AMX CPUs),
    and whether each pair was timed in the same side-by-side pass."""
    out: dict[str, Any] = {}
    p50 = (r.get("latency") or {}).get("p50_ms")
    for prec in ("fp32", "fp16"):
        base = same_backend(records, r, prec)
        b50 = ((base or {}).get("latency") or {}).get("p50_ms")
        if p50 and b50:
            out[f"vs_{prec}"] = b50 / p50
            out[prec] = base["name"]
            out[f"{prec}_same_pass"] = (base["latency"].get("group") is not None
                                        and base["latency"].get("group") == r["latency"].get("group"))
    return out


def _ci_text(m: dict[str, Any]) -> str:
    ci = m.get("map_drop_ci")
    if not ci:
        return ""
    star = "*" if ci["significant"] else ""
    return f"{ci['drop']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]{star}"


def rows(records: list[dict[str, Any]], reference: str | None = None) -> list[dict[str, str]]:
    """One display row per record (strings), against the reference and the same backend's FP32."""
    from yoloq.budget import label

    ref = reference_of(records, reference)
    ref_map = (ref or {}).get("metrics", {}).get("map50_95")
    ref_p50 = (ref or {}).get("latency", {}).get("p50_ms")
    out = []
    for r in records:
        m, lat = r.get("metrics") or {}, r.get("latency") or {}
        base = same_backend_fp32(records, r) or ref or {}
        keep = 100.0 * m["map50_95"] / ref_map if ref_map and m.get("map50_95") is not None else None
        p50 = lat.get("p50_ms")
        sp = speedup(records, r)
        base_size = base.get("size_mb")
        out.append({
            "variant": r["name"] + (" (ref)" if ref is not None and r["name"] == ref["name"] else ""),
            "ran as": (r.get("runtime") or {}).get("precision_ran", ""),
            "status": r["status"],
            "mAP50-95": _fmt(m.get("map50_95"), 4), "mAP50": _fmt(m.get("map50"), 4),
            "drop [95% CI]": _ci_text(m), "% of ref": _fmt(keep, 1),
            "p50 ms": _fmt(p50, 2), "p90 ms": _fmt(lat.get("p90_ms"), 2), "p99 ms": _fmt(lat.get("p99_ms"), 2),
            "FPS": _fmt(lat.get("throughput_fps"), 1),
            "x ref": _fmt(ref_p50 / p50 if p50 and ref_p50 else None, 2, "x"),
            "x fp32": _fmt(sp.get("vs_fp32"), 2, "x"),
            "x fp16": _fmt(sp.get("vs_fp16") if r["precision"] != "fp16" else None, 2, "x"),
            "size MB": _fmt(r.get("size_mb"), 2),
            "compr.": _fmt(r["size_mb"] / base_size if r.get("size_mb") and base_size else None, 2, "x"),
            "budget": label(r.get("budget")),
            "reason": (r.get("reason") or "")[:160],
        })
    return out


def markdown_table(table: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A GitHub-flavoured markdown table, padded so it also reads in a terminal."""
    widths = {c: max([len(c), *(len(t[c]) for t in table)]) for c in columns}

    def line(vals: list[str]) -> str:
        return "| " + " | ".join(v.ljust(widths[c]) for c, v in zip(columns, vals)) + " |"

    head = [line(list(columns)), "| " + " | ".join("-" * widths[c] for c in columns) + " |"]
    return "\n".join(head + [line([t[c] for c in columns]) for t in table])


def per_class_losses(records: list[dict[str, Any]], ref: dict[str, Any] | None, top: int = 5
                     ) -> list[dict[str, str]]:
    """For each ok non-reference variant, the ``top`` classes whose AP50-95 falls most against the reference."""
    if not ref:
        return []
    base = ref["metrics"].get("per_class", {})
    out = []
    for r in records:
        if r.get("status") != "ok" or r["name"] == ref["name"]:
            continue
        pc = r["metrics"].get("per_class", {})
        drops = [(d, c) for d, c in sorted(((base[c] - pc.get(c, 0.0), c) for c in base), reverse=True)[:top]
                 if d > 5e-4]
        out.append({"variant": r["name"],
                    "classes that lose most (AP50-95 ref -> variant)": ", ".join(
                        f"{c} {base[c]:.3f}->{pc.get(c, 0.0):.3f}" for _, c in drops) or "none loses AP"})
    return out


def size_table(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """AP small / medium / large per ok variant."""
    return [{"variant": r["name"], "AP small": _fmt(r["metrics"].get("map_small"), 4),
             "AP medium": _fmt(r["metrics"].get("map_medium"), 4), "AP large": _fmt(r["metrics"].get("map_large"), 4)}
            for r in records if r.get("status") == "ok"]


def environment(records: list[dict[str, Any]]) -> list[str]:
    """Lines describing the machine, versions, calibration, dataset and config hash."""
    if not records:
        return []
    r = next((x for x in records if x.get("status") == "ok"), records[-1])
    mach, cal, ds = r.get("machine", {}), r.get("calibration", {}), r.get("dataset", {})
    isa = ", ".join(k for k in ("avx512_vnni", "avx512_bf16", "amx") if mach.get(k)) or "no VNNI/BF16/AMX"
    return [
        f"model: {r.get('model', {}).get('name')} (sha256 {str(r.get('model', {}).get('sha256'))[:12]}), "
        f"imgsz {r.get('imgsz')}",
        f"dataset: {ds.get('name')}/{ds.get('split')}, {ds.get('images')} images evaluated",
        f"calibration: {', '.join(cal.get('sources', []))}; {cal.get('images')} images, seed {cal.get('seed')}, "
        f"list sha256 {str(cal.get('sha256'))[:12]}",
        f"machine: {mach.get('cpu')}, {mach.get('cores')} cores ({isa}); GPU: {mach.get('gpu') or 'none'}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in (r.get("versions") or {}).items()),
        f"config hash: {r.get('config_hash')}",
    ]


def _notes(records: list[dict[str, Any]], ref: dict[str, Any] | None) -> list[str]:
    cis = [r["metrics"]["map_drop_ci"] for r in records if r.get("status") == "ok" and
           r.get("metrics", {}).get("map_drop_ci")]
    notes = []
    if ref:
        notes.append(f"Reference: {ref['name']} (mAP50-95 {ref['metrics']['map50_95']:.4f}). 'drop' is reference "
                     f"minus variant mAP50-95 (positive = lost).")
    if cis:
        n_img = (ref or {}).get("metrics", {}).get("images")
        notes.append(f"95% intervals: paired bootstrap, {cis[0]['resamples']} resamples of the {n_img} evaluation "
                     f"images (seed {cis[0]['seed']}); * marks a drop whose interval excludes 0 (significant).")
    notes.append("x ref / x fp32 / x fp16: p50 speed-up against the reference and against the same backend's "
                 "FP32 and FP16; compr.: size against the same backend's FP32.")
    return notes


def _config_order(run_dir: Path) -> list[str]:
    """Variant names in the order the run's config lists them (empty when there is no config)."""
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        from yoloq.config import VariantConfig

        return [VariantConfig(**{k: v for k, v in x.items() if k in ("format", "precision", "device", "name")}).label
                for x in cfg.get("variants", [])]
    except (OSError, TypeError, ValueError, AttributeError):
        return []


def qat_table(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """QAT against PTQ on the same backend: mAP of each, PTQ - QAT with its paired 95% interval."""
    by_name = {r["name"]: r for r in records}
    out = []
    for r in records:
        c = (r.get("metrics") or {}).get("qat_vs_ptq")
        if not c or c.get("ptq") not in by_name:
            continue
        out.append({"QAT variant": r["name"], "PTQ variant": c["ptq"],
                    "PTQ mAP50-95": _fmt(by_name[c["ptq"]]["metrics"].get("map50_95"), 4),
                    "QAT mAP50-95": _fmt(r["metrics"].get("map50_95"), 4),
                    "PTQ - QAT [95% CI]": f"{c['drop']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"
                                          + ("*" if c.get("significant") else "")})
    return out


def build(run_dir: Path, reference: str | None = None) -> dict[str, Any]:
    """Everything a report shows, from the run's records (in the config's variant order)."""
    records = load_records(run_dir / "records.jsonl")
    order = {name: i for i, name in enumerate(_config_order(run_dir))}
    records.sort(key=lambda r: order.get(r["name"], len(order)))
    ref = reference_of(records, reference)
    return {"run": run_dir.name, "records": records, "ref": ref, "table": rows(records, reference),
            "losses": per_class_losses(records, ref), "sizes": size_table(records), "qat": qat_table(records),
            "environment": environment(records), "notes": _notes(records, ref)}


def write_reports(run_dir: Path, reference: str | None = None) -> str:
    """Write ``summary.csv``, ``report.md``, ``report.html`` and the plots; return the terminal table."""
    from yoloq.plots import pareto_plots
    from yoloq.report_html import render_html

    data = build(run_dir, reference)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS))
    w.writeheader()
    w.writerows(data["table"])
    write_atomic(run_dir / "summary.csv", buf.getvalue())
    plots = pareto_plots(data["records"], run_dir)
    md = [f"# yoloq report: {data['run']}", "", *data["notes"], "", markdown_table(data["table"]), ""]
    md += [f"![{name}]({path.name})" for name, path in plots.items()] + [""]
    if data["qat"]:
        md += ["## QAT against PTQ (paired bootstrap over the evaluation images; * = significant)", "",
               markdown_table(data["qat"], tuple(data["qat"][0])), ""]
    if data["losses"]:
        md += ["## Classes that lose most", "",
               markdown_table(data["losses"], tuple(data["losses"][0])), ""]
    if data["sizes"]:
        md += ["## AP by object size", "", markdown_table(data["sizes"], tuple(data["sizes"][0])), ""]
    md += ["## Environment", "", *(f"- {line}" for line in data["environment"]), ""]
    write_atomic(run_dir / "report.md", "\n".join(md))
    write_atomic(run_dir / "report.html", render_html(data, plots))
    return markdown_table(data["table"], TERMINAL)

