"""Tables for the user docs, written from records only, so every figure in README and docs traces to a record."""

from __future__ import annotations

from pathlib import Path

from yoloq.records import Record, RecordStore, reference_of

COLUMNS = ("variant", "ran as", "mAP50-95", "kept", "drop [95% CI]", "p50 ms", "x its FP32", "MB")


def _row(r: Record, ref: Record) -> list[str]:
    ci = r.metrics.get("map_drop_ci") or {}
    drop = f"{ci['drop']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]" if ci and r is not ref else ""
    x = (r.speedup or {}).get("vs_fp32")
    return [r.name + (" (reference)" if r is ref else ""), r.runtime.get("precision_ran", r.precision),
            f"{r.map:.4f}", f"{100 * r.map / ref.map:.1f}%", drop, f"{r.p50:.1f}",
            f"{x:.2f}x" if x else "", f"{r.size_mb:.1f}"]


def results_table(run_dir: Path, names: list[str] | None = None) -> str:
    """A markdown table of ``names`` (default: every ok variant) of the run in ``run_dir``, in config order."""
    records = sorted(RecordStore(run_dir).all(), key=lambda r: r.order)
    ref = reference_of(records)
    if ref is None:
        raise ValueError(f"{run_dir} has no ok reference record")
    keep = [r for r in records if r.ok and (names is None or r.name in names)]
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    lines += ["| " + " | ".join(_row(r, ref)) + " |" for r in keep]
    return "\n".join(lines) + "\n"
