"""Tables for the user docs, written from records only, so every figure in README and docs traces to a record."""

from __future__ import annotations

import re
from pathlib import Path

from yoloq.records import Record, RecordStore, reference_of, write_atomic

# <!-- results-table: RUN_DIR (any note) --> ... <!-- /results-table -->: a table this module writes
BLOCK = re.compile(r"(<!-- results-table: (\S+)(?: \(.*?\))? -->\n)(.*?)(<!-- /results-table -->)", re.S)

COLUMNS = ("variant", "ran as", "mAP50-95", "kept", "drop [95% CI]", "p50 ms", "x its FP32", "MB")


def _row(r: Record, ref: Record) -> list[str]:
    ci = r.metrics.get("map_drop_ci") or {}
    drop = f"{ci['drop']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]" if ci and r is not ref else ""
    x = (r.speedup or {}).get("vs_fp32")
    return [r.name + (" (reference)" if r is ref else ""), r.runtime.get("precision_ran", r.precision),
            f"{r.map:.4f}", f"{100 * r.map / ref.map:.1f}%", drop, f"{r.p50:.1f}" if r.p50 else "not timed",
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


def block_names(table: str) -> list[str]:
    """The variant names a written table lists, in its order."""
    return [ln.split("|")[1].strip().replace(" (reference)", "") for ln in table.splitlines()[2:] if ln.strip()]


def refresh(page: Path, root: Path) -> int:
    """Rewrite every results-table block of ``page`` from its run's records (run folders relative to ``root``);
    returns how many blocks were written."""
    text = page.read_text()
    n = 0

    def write(m: re.Match) -> str:
        nonlocal n
        n += 1
        return m.group(1) + results_table(root / m.group(2), block_names(m.group(3)) or None) + m.group(4)

    new = BLOCK.sub(write, text)
    if new != text:
        write_atomic(page, new)
    return n
