"""A self-contained ``report.html``: inline CSS, plots embedded as base64 PNG, opens from disk."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from yoloq.report.differences import DIFFERENCES_NOTE
from yoloq.report.emulated import DEVICE_NOTE, EMULATED_NOTE
from yoloq.report.table import COLUMNS, TERMINAL

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
td.reason{text-align:left;white-space:normal;min-width:160px;max-width:300px;color:#a33}
td.wrap{text-align:left;white-space:normal;min-width:90px;max-width:200px}
td.verdict{text-align:left;white-space:normal;min-width:220px;max-width:420px}
tr.failed td{background:#fdecec}tr.skipped td{color:#888}
.pass{color:#176e2c;font-weight:600}.fail{color:#b00020;font-weight:600}.sig{color:#b00020}
img{max-width:720px;border:1px solid #ddd;margin:6px 12px 6px 0}img.diff{max-width:1280px;display:block}
.notes li,.env li{font-size:13px;margin:2px 0}
"""


WRAP = ("ran as", "device", "emulated CPU", "not int8 (layers, time ms)", "details")  # long text wraps in its cell


def _cell(col: str, val: str) -> str:
    cls = {"PASS": "pass", "FAIL": "fail"}.get(val, "")
    if col == "reason":
        cls = "reason"
    elif col in WRAP:
        cls = "wrap"
    elif col == "verdict":
        cls = "verdict"
    if col == "drop [95% CI]" and val.endswith("*"):
        cls = "sig"
    return f'<td class="{cls}">{html.escape(val)}</td>' if cls else f"<td>{html.escape(val)}</td>"


def _table(rows: list[dict[str, str]], columns: tuple[str, ...], row_class: str | None = None, tid: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        f'<tr class="{html.escape(r.get(row_class, "")) if row_class else ""}">'
        + "".join(_cell(c, r[c]) for c in columns) + "</tr>" for r in rows)
    return f'<table id="{tid}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(data: dict[str, Any], plots: dict[str, Path]) -> str:
    """The report page for ``build()``'s data and the plot files."""
    imgs = "".join(
        f'<img class="plot" alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}">' for name, p in plots.items())
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>yoloq report: {html.escape(data['run'])}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>yoloq report: {html.escape(data['run'])}</h1>",
        "<ul class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in data["notes"]) + "</ul>",
        "<h2>Variants</h2>", _table(data["table"], TERMINAL, row_class="status", tid="variants"),
        f"<p class='notes'>Every column ({', '.join(c for c in COLUMNS if c not in TERMINAL)} too) is in "
        "summary.csv.</p>",
        "<h2>Pareto: accuracy against latency and size</h2>", imgs,
    ]
    if data.get("streams"):
        st = data["streams"]
        parts += ["<h2>Throughput: streams in flight</h2>", f"<p class='notes'>{html.escape(st['note'])}</p>",
                  "<ul class='notes'>" + "".join(f"<li>{html.escape(c)}</li>" for c in st["cameras"]) + "</ul>",
                  _table(st["table"], tuple(st["table"][0]), tid="streams")]
        if data.get("throughput_plot"):
            parts.append(f'<img class="plot" alt="throughput" src="data:image/png;base64,'
                         f'{base64.b64encode(Path(data["throughput_plot"]).read_bytes()).decode()}">')
    if data.get("qat"):
        parts += ["<h2>QAT against PTQ (PTQ - QAT, paired 95% interval; * = significant)</h2>",
                  _table(data["qat"], tuple(data["qat"][0]), tid="qat")]
    if data.get("emulated"):
        parts += ["<h2>On the device's instruction set (emulated)</h2>",
                  f"<p class='notes'>{html.escape(EMULATED_NOTE)}</p>",
                  _table(data["emulated"], tuple(data["emulated"][0]), tid="emulated")]
    if data.get("devices"):
        parts += ["<h2>Timed on the devices</h2>", f"<p class='notes'>{html.escape(DEVICE_NOTE)}</p>",
                  _table(data["devices"], tuple(data["devices"][0]), tid="devices")]
    if data.get("explain"):
        parts += ["<h2>INT8 explained (yoloq explain)</h2>",
                  _table(data["explain"], tuple(data["explain"][0]), tid="explain")]
    if data.get("differences"):
        parts += ["<h2>Where INT8 differs most from the reference</h2>",
                  f"<p class='notes'>{html.escape(DIFFERENCES_NOTE)}</p>",
                  _table(data["differences"], tuple(data["differences"][0]), tid="differences")]
        parts += [f'<img class="diff" alt="{html.escape(d["variant"])} {html.escape(d["image"])}" '
                  f'src="{html.escape(d["file"])}">' for d in data["differences"] if d["image"]]
    if data["losses"]:
        parts += ["<h2>Classes that lose most</h2>", _table(data["losses"], tuple(data["losses"][0]), tid="losses")]
    if data["sizes"]:
        parts += ["<h2>AP by object size</h2>", _table(data["sizes"], tuple(data["sizes"][0]), tid="sizes")]
    parts += ["<h2>Environment</h2><ul class='env'>"
              + "".join(f"<li>{html.escape(e)}</li>" for e in data["environment"]) + "</ul>", "</body></html>"]
    return "\n".join(parts)
