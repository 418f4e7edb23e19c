"""Throughput with several streams in flight: the curve per variant as a table and a plot, and the cameras each
variant serves at the config's frame rate, from the records' ``throughput`` field alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yoloq.backends.registry import style_of
from yoloq.records import Record
from yoloq.report.plots import save_figure
from yoloq.throughput import cameras


def streams_note(records: list[Record]) -> str:
    """What the throughput table measures, with the pass's settings and outside load as the records hold them."""
    done = [r.throughput for r in records if r.throughput.get("levels")]
    if not done:
        return ""
    t = done[0]
    s = t.get("settings", {})
    load = (t.get("outside_load") or {}).get("share")
    return (f"Frames per second end to end (letterbox, inference, NMS at conf {s.get('conf')}; decoding excluded) with "
            f"N streams in flight, each a loop over {s.get('images')} preloaded images on its own runtime: separate "
            f"sessions or interpreters with the {t.get('threads')} threads split between them, or OpenVINO's "
            f"THROUGHPUT hint with one infer request per stream (how each ran: summary.csv and the records). "
            f"All variants side by side in round-robin blocks of {s.get('block')} s, {s.get('seconds')} s per "
            f"variant and stream count after {s.get('warmup')} warm-up frames per stream (one more at each later "
            f"block); p90: a frame's time at that load. Cameras: the best stream count's FPS over {s.get('fps'):g} "
            f"FPS per camera, rounded down"
            + (f"; other processes took {100 * load:.0f}% of the CPU meanwhile." if load is not None else "."))


def _camera_fps(records: list[Record]) -> float | None:
    return next((r.throughput["settings"].get("fps") for r in records if r.throughput.get("settings")), None)


def streams_table(records: list[Record]) -> list[dict[str, str]]:
    """One row per timed variant: FPS and per-frame p90 at each stream count, the best count and the cameras
    served at the config's frame rate (or why there is no curve)."""
    fps = _camera_fps(records)
    levels = sorted({lv["streams"] for r in records for lv in r.throughput.get("levels", [])})
    if fps is None or not levels:
        return []
    out = []
    for r in records:
        t = r.throughput
        if not t:
            continue
        by = {lv["streams"]: lv for lv in t.get("levels", [])}
        best = cameras(t.get("levels", []), fps)
        row = {"variant": r.name}
        for n in levels:
            lv = by.get(n)
            row[f"{n} stream{'s' * (n > 1)}: FPS (p90 ms)"] = f"{lv['fps']:.1f} ({lv['p90_ms']:.0f})" if lv else ""
        row["best"] = f"{best['fps']:.1f} FPS at {best['streams']}" if best else ""
        row[f"cameras at {fps:g} FPS"] = str(best["cameras"]) if best else ""
        ran = (t.get("concurrency") or {}).get(str(best["streams"]), "") if best else ""
        row["details"] = t.get("error") or ran
        out.append(row)
    return out


def camera_lines(records: list[Record]) -> list[str]:
    """One line per variant: how many cameras at the config's frame rate it serves on this machine."""
    fps = _camera_fps(records)
    out = []
    for r in records:
        best = cameras(r.throughput.get("levels", []), fps) if fps else None
        if best:
            out.append(f"{r.name}: {best['cameras']} camera{'s' * (best['cameras'] != 1)} at {fps:g} FPS "
                       f"({best['fps']:.1f} FPS with {best['streams']} stream{'s' * (best['streams'] > 1)} in "
                       f"flight, p90 {best['p90_ms']:.0f} ms a frame)")
    return out


def summary_columns(r: Record) -> dict[str, str]:
    """The throughput columns of ``summary.csv`` for one record."""
    levels = r.throughput.get("levels", [])
    fps = (r.throughput.get("settings") or {}).get("fps")
    best = cameras(levels, fps) if fps else None
    return {"streams FPS": " ".join(f"{lv['streams']}:{lv['fps']:.1f}" for lv in levels),
            "cameras": str(best["cameras"]) if best else "",
            "concurrency": "; ".join(f"{k}: {v}" for k, v in (r.throughput.get("concurrency") or {}).items())}


def throughput_plot(records: list[Record], run_dir: Path) -> Path | None:
    """``throughput.png``: FPS against streams in flight per variant, with the cameras served on a second axis."""
    curves = [r for r in records if r.throughput.get("levels")]
    fps = _camera_fps(records)
    if not curves or not fps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    markers = {"fp32": "o", "fp16": "s", "int8": "^"}
    styles = {"fp32": ":", "fp16": "--", "int8": "-"}
    for r in curves:
        lv = r.throughput["levels"]
        ax.plot([x["streams"] for x in lv], [x["fps"] for x in lv], styles.get(r.precision, "-"),
                marker=markers.get(r.precision, "D"), c=style_of(r.format).color, label=r.name, lw=1.4, ms=5)
    xs = sorted({x["streams"] for r in curves for x in r.throughput["levels"]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("streams in flight")
    ax.set_ylabel("frames per second, end to end")
    ax.set_ylim(bottom=0)
    cams = ax.secondary_yaxis("right", functions=(lambda y: y / fps, lambda c: c * fps))
    cams.set_ylabel(f"cameras at {fps:g} FPS")
    ax.set_title("Throughput with several streams in flight (letterbox + inference + NMS)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, ncol=2, loc="lower right")
    return save_figure(fig, run_dir / "throughput.png")


def throughput_summary(records: list[Record]) -> dict[str, Any]:
    """The report's throughput section: its note, table and camera lines (empty when no curve was measured)."""
    table = streams_table(records)
    return {"note": streams_note(records), "table": table, "cameras": camera_lines(records)} if table else {}
