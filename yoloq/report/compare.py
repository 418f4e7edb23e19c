"""Two runs side by side: the change in mAP and latency of every variant they share."""

from __future__ import annotations

from pathlib import Path

from yoloq.provenance import describe
from yoloq.records import Record, RecordStore, write_atomic
from yoloq.report.table import markdown_table


def _f(x: float | None, nd: int, sign: bool = False) -> str:
    return "" if x is None else (f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}")


def compare_rows(a: list[Record], b: list[Record]) -> list[dict[str, str]]:
    """One row per variant name in either run (missing or not-ok sides left blank)."""
    ra, rb = {r.name: r for r in a}, {r.name: r for r in b}
    out = []
    for name in [*ra, *(n for n in rb if n not in ra)]:
        x, y = ra.get(name), rb.get(name)
        ma = x.map if x and x.ok else None
        mb = y.map if y and y.ok else None
        la = x.p50 if x and x.ok else None
        lb = y.p50 if y and y.ok else None
        out.append({"variant": name, "status A": x.status if x else "-", "status B": y.status if y else "-",
                    "mAP A": _f(ma, 4), "mAP B": _f(mb, 4),
                    "d mAP": _f(mb - ma if ma is not None and mb is not None else None, 4, True),
                    "p50 A ms": _f(la, 2), "p50 B ms": _f(lb, 2),
                    "d p50 %": _f(100 * (lb - la) / la if la and lb else None, 1, True)})
    return out


def compare(run_a: Path, run_b: Path, out: Path) -> str:
    """Write a markdown comparison of two run folders to ``out`` and return its table."""
    a, b = RecordStore(run_a).all(), RecordStore(run_b).all()
    table = markdown_table(rows := compare_rows(a, b), tuple(rows[0])) if (a or b) else "(no records)"

    def desc(recs: list[Record]) -> str:
        if not recs:
            return "no records"
        r = recs[0]
        return (f"{r.model.get('name')} sha256 {str(r.model.get('sha256'))[:12]}, {describe(r.machine)}, "
                f"ultralytics {r.versions.get('ultralytics')}, config {r.config_hash}")

    text = (f"# yoloq compare\n\n- A: {run_a.name}: {desc(a)}\n- B: {run_b.name}: {desc(b)}\n\n"
            f"d mAP = B - A (mAP50-95); d p50 % = latency change of B against A (negative = faster).\n\n{table}\n")
    write_atomic(out, text)
    return table
