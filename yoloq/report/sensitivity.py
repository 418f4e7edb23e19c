"""The sensitivity table, csv and plot for ``yoloq sensitivity``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yoloq.backends.base import GroupError


def write_sensitivity(results: list[GroupError], out_dir: Path, title: str) -> str:
    """Write ``sensitivity.md``, ``sensitivity.csv`` and ``sensitivity.png``; return the markdown table."""
    import csv
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from yoloq.records import write_atomic
    from yoloq.report.table import markdown_table

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
