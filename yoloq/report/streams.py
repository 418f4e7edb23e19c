"""Throughput with several streams in flight: the curve per variant as a table and a plot, and the cameras each
variant serves at the config's frame rate, from the records' ``throughput`` field alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yoloq.backends.registry import style_of
from yoloq.records import Record
from yoloq.report.plots import save_figure
from yoloq.throughput import cameras, level_name


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
            f"THROUGHPUT hint with one infer request per stream (how each ran: summary.csv and the records)"
            + ("; batch B: one stream whose every inference takes B frames at once (a recorder batching its "
               "cameras), each frame's time the whole batch's" if s.get("batches") else "") + ". "
            f"All variants side by side in round-robin blocks of {s.get('block')} s, {s.get('seconds')} s per "
            f"variant and stream count after {s.get('warmup')} warm-up frames per stream (one more at each later "
            f"block); p90: a frame's time at that load. Cameras: the best level's FPS over {s.get('fps'):g} "
            f"FPS per camera, rounded down"
            + ("; at batch 1: the best stream count's alone" if s.get("batches") else "")
            + (f"; other processes took {100 * load:.0f}% of the CPU meanwhile." if load is not None else "."))


def _camera_fps(records: list[Record]) -> float | None:
    return next((r.throughput["settings"].get("fps") for r in records if r.throughput.get("settings")), None)


def _key(lv: dict[str, Any]) -> tuple[int, int]:
    return lv["streams"], lv.get("batch", 1)


def _where(best: dict[str, Any]) -> str:
    return f"batch {best['batch']}" if best.get("batch", 1) > 1 else f"{best['streams']}"


def streams_table(records: list[Record]) -> list[dict[str, str]]:
    """One row per timed variant: FPS and per-frame p90 at each stream count and batch, the best level and the
    cameras served at the config's frame rate (with batches: also at batch 1 alone), or why there is no curve."""
    fps = _camera_fps(records)
    levels = sorted({_key(lv) for r in records for lv in r.throughput.get("levels", [])}, key=lambda k: k[::-1])
    if fps is None or not levels:
        return []
    batched = any(b > 1 for _, b in levels)
    out = []
    for r in records:
        t = r.throughput
        if not t:
            continue
        by = {_key(lv): lv for lv in t.get("levels", [])}
        best = cameras(t.get("levels", []), fps)
        row = {"variant": r.name}
        for k in levels:
            lv, (n, b) = by.get(k), k
            head = f"batch {b}" if b > 1 else f"{n} stream{'s' * (n > 1)}"
            refused = (t.get("batches_refused") or {}).get(str(b), "") if b > 1 else ""
            row[f"{head}: FPS (p90 ms)"] = f"{lv['fps']:.1f} ({lv['p90_ms']:.0f})" if lv else \
                ("refused" if refused else "")
        row["best"] = f"{best['fps']:.1f} FPS at {_where(best)}" if best else ""
        if batched:
            one = cameras(t.get("levels", []), fps, batches=False)
            row[f"cameras at {fps:g} FPS, batch 1"] = str(one["cameras"]) if one else ""
        row[f"cameras at {fps:g} FPS"] = str(best["cameras"]) if best else ""
        ran = (t.get("concurrency") or {}).get(level_name(_key(best)), "") if best else ""
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
            how = (f"batches of {best['batch']}" if best.get("batch", 1) > 1 else
                   f"{best['streams']} stream{'s' * (best['streams'] > 1)} in flight")
            one = cameras(r.throughput.get("levels", []), fps, batches=False)
            alone = (f"; {one['cameras']} at batch 1" if one and best.get("batch", 1) > 1 else "")
            out.append(f"{r.name}: {best['cameras']} camera{'s' * (best['cameras'] != 1)} at {fps:g} FPS "
                       f"({best['fps']:.1f} FPS with {how}, p90 {best['p90_ms']:.0f} ms a frame{alone})")
    return out


def summary_columns(r: Record) -> dict[str, str]:
    """The throughput columns of ``summary.csv`` for one record."""
    levels = r.throughput.get("levels", [])
    fps = (r.throughput.get("settings") or {}).get("fps")
    best = cameras(levels, fps) if fps else None
    return {"streams FPS": " ".join(f"{level_name(_key(lv)).replace('batch ', 'b')}:{lv['fps']:.1f}"
                                    for lv in levels),
            "cameras": str(best["cameras"]) if best else "",
            "concurrency": "; ".join(f"{k}: {v}" for k, v in (r.throughput.get("concurrency") or {}).items())}


def throughput_plot(records: list[Record], run_dir: Path) -> Path | None:
    """``throughput.png``: FPS against streams in flight per variant (and, where batches were timed, against the
    batch size beside it), with the cameras served on a second axis."""
    curves = [r for r in records if r.throughput.get("levels")]
    fps = _camera_fps(records)
    if not curves or not fps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batched = any(lv.get("batch", 1) > 1 for r in curves for lv in r.throughput["levels"])
    fig, axes = plt.subplots(1, 2 if batched else 1, figsize=(11 if batched else 7.5, 4.8), dpi=110, squeeze=False)
    markers = {"fp32": "o", "fp16": "s", "int8": "^"}
    styles = {"fp32": ":", "fp16": "--", "int8": "-"}
    for ax, kind in zip(axes[0], ("streams", "batch")):
        pts = {r.name: sorted((lv.get(kind, 1), lv["fps"]) for lv in r.throughput["levels"]
                              if lv.get("batch", 1) == 1 and (kind == "streams" or lv["streams"] == 1)
                              or kind == "batch" and lv.get("batch", 1) > 1) for r in curves}
        for r in curves:
            ax.plot([x for x, _ in pts[r.name]], [y for _, y in pts[r.name]], styles.get(r.precision, "-"),
                    marker=markers.get(r.precision, "D"), c=style_of(r.format).color, label=r.name, lw=1.4, ms=5)
        xs = sorted({x for p in pts.values() for x, _ in p})
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("streams in flight" if kind == "streams" else "batch size (one stream)")
        ax.set_ylabel("frames per second, end to end")
        ax.set_ylim(bottom=0)
        cams = ax.secondary_yaxis("right", functions=(lambda y: y / fps, lambda c: c * fps))
        cams.set_ylabel(f"cameras at {fps:g} FPS")
        ax.set_title(f"Throughput with several {'streams in flight' if kind == 'streams' else 'frames a batch'} "
                     f"(letterbox + inference + NMS)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, ncol=2, loc="lower right")
    return save_figure(fig, run_dir / "throughput.png")


def throughput_summary(records: list[Record]) -> dict[str, Any]:
    """The report's throughput section: its note, table and camera lines (empty when no curve was measured)."""
    table = streams_table(records)
    return {"note": streams_note(records), "table": table, "cameras": camera_lines(records)} if table else {}
