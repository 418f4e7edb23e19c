"""Records to what people read: ``summary.csv``, ``report.md``, ``report.html`` and the plots.

Everything here is computed from the run's records alone (their order and reference included).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from yoloq.records import RecordStore, reference_of, write_atomic
from yoloq.report.differences import DIFFERENCES_NOTE, write_differences
from yoloq.report.emulated import DEVICE_NOTE, EMULATED_NOTE, device_table, emulated_table
from yoloq.report.streams import summary_columns, throughput_plot, throughput_summary
from yoloq.report.table import (
    COLUMNS,
    TERMINAL,
    environment,
    explain_table,
    markdown_table,
    notes,
    per_class_losses,
    qat_table,
    rows,
    size_table,
)

__all__ = ["build", "write_reports"]



def build(store: RecordStore) -> dict[str, Any]:
    """Everything a report shows, from the run's records (in config order)."""
    records = store.all()
    ref = reference_of(records)
    return {"run": store.run_dir.name, "records": records, "ref": ref, "table": rows(records),
            "losses": per_class_losses(records, ref), "sizes": size_table(records), "qat": qat_table(records),
            "environment": environment(records), "notes": notes(records, ref), "explain": explain_table(records),
            "emulated": emulated_table(records), "devices": device_table(records),
            "streams": throughput_summary(records)}


def write_reports(store: RecordStore) -> str:
    """Write ``summary.csv``, ``report.md``, ``report.html`` and the plots; return the terminal table."""
    from yoloq.report.html import render_html
    from yoloq.report.plots import pareto_plots

    run_dir = store.run_dir
    data = build(store)
    buf = io.StringIO()
    csv_rows = [row | summary_columns(r) for row, r in zip(data["table"], data["records"])]
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS) + list(summary_columns(data["records"][0])) if csv_rows
                       else list(COLUMNS))
    w.writeheader()
    w.writerows(csv_rows)
    write_atomic(run_dir / "summary.csv", buf.getvalue())
    plots = pareto_plots(data["records"], run_dir)
    data["throughput_plot"] = throughput_plot(data["records"], run_dir) if data["streams"] else None
    data["differences"] = write_differences(run_dir, data["records"], data["ref"])
    md = [f"# yoloq report: {data['run']}", "", *data["notes"], "", markdown_table(data["table"]), ""]
    md += [f"![{name}]({path.name})" for name, path in plots.items()] + [""]
    if data["streams"]:
        st = data["streams"]
        md += ["## Throughput: streams in flight", "", st["note"], "", *(f"- {line}" for line in st["cameras"]), "",
                markdown_table(st["table"], tuple(st["table"][0])), ""]
        md += ["![throughput](throughput.png)", ""] if data["throughput_plot"] else []
    if data["qat"]:
        md += ["## QAT against PTQ (paired bootstrap over the evaluation images; * = significant)", "",
               markdown_table(data["qat"], tuple(data["qat"][0])), ""]
    if data["emulated"]:
        md += ["## On the device's instruction set (emulated)", "", EMULATED_NOTE, "",
               markdown_table(data["emulated"], tuple(data["emulated"][0])), ""]
    if data["devices"]:
        md += ["## Timed on the devices", "", DEVICE_NOTE, "",
               markdown_table(data["devices"], tuple(data["devices"][0])), ""]
    if data["explain"]:
        md += ["## INT8 explained (yoloq explain: the runtime's executed graph)", "",
               markdown_table(data["explain"], tuple(data["explain"][0])), ""]
    if data["differences"]:
        md += ["## Where INT8 differs most from the reference", "", DIFFERENCES_NOTE, "",
               markdown_table(data["differences"], tuple(data["differences"][0])), ""]
        md += [f"![{d['variant']} {d['image']}]({d['file']})" for d in data["differences"] if d["image"]] + [""]
    if data["losses"]:
        md += ["## Classes that lose most", "",
               markdown_table(data["losses"], tuple(data["losses"][0])), ""]
    if data["sizes"]:
        md += ["## AP by object size", "", markdown_table(data["sizes"], tuple(data["sizes"][0])), ""]
    md += ["## Environment", "", *(f"- {line}" for line in data["environment"]), ""]
    write_atomic(run_dir / "report.md", "\n".join(md))
    write_atomic(run_dir / "report.html", render_html(data, plots))
    return markdown_table(data["table"], TERMINAL)
