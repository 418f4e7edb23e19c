"""Pareto plots of accuracy against latency and size (matplotlib, written as PNG files)."""

from __future__ import annotations

from pathlib import Path

from yoloq.backends.registry import style_of
from yoloq.records import Record


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats: lower-or-equal cost and higher-or-equal mAP, one strictly."""
    front = []
    for i, (c, m) in enumerate(points):
        dominated = any((c2 <= c and m2 >= m) and (c2 < c or m2 > m) for j, (c2, m2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def _error_bar(r: Record, y: float) -> tuple[float, float] | None:
    """Below/above ``y`` (the variant's mAP): its paired 95% interval of the drop from the reference, as
    the range of mAP the reference minus that drop spans."""
    ci = r.metrics.get("map_drop_ci") or {}
    if not {"drop", "lo", "hi"} <= set(ci):
        return None
    return max(ci["hi"] - ci["drop"], 0.0), max(ci["drop"] - ci["lo"], 0.0)


def _labels(fig: object, ax: object, names: list[str], pts: list[tuple[float, float]]) -> None:
    """Label each point, moving a label to the first nearby place where it overlaps no earlier label."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    placed = []
    offsets = [(5, 4), (5, -11), (-5, 4), (-5, -11), (5, 14), (5, -21), (-5, 14), (-5, -21), (5, 24), (5, -31)]
    for name, (x, y) in zip(names, pts):
        for i, (dx, dy) in enumerate(offsets):
            t = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7,  # type: ignore[attr-defined]
                            ha="left" if dx > 0 else "right")
            box = t.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in placed) or i == len(offsets) - 1:
                placed.append(box)
                break
            t.remove()


def _plot(records: list[Record], cost: str, xlabel: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.ok and r.map is not None and (r.p50 if cost == "latency" else r.size_mb)]
    pts = [((r.p50 if cost == "latency" else r.size_mb), r.map) for r in ok]
    if not pts:
        return None
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    markers = {"fp32": "o", "fp16": "s", "int8": "^"}
    bars = False
    for r, (x, y) in zip(ok, pts):
        err = _error_bar(r, y)
        if err is not None:
            ax.errorbar(x, y, yerr=[[err[0]], [err[1]]], fmt="none", ecolor=style_of(r.format).color, elinewidth=1,
                        capsize=3, alpha=0.8, zorder=2)
            bars = True
        ax.scatter(x, y, s=70, c=style_of(r.format).color, marker=markers.get(r.precision, "D"),
                   edgecolors="black", linewidths=0.6, zorder=3)
    _labels(fig, ax, [r.name for r in ok], pts)
    fx = sorted(pts[i] for i in front)
    ax.plot([p[0] for p in fx], [p[1] for p in fx], "--", c="#d62728", lw=1.4, zorder=2, label="front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mAP50-95 (pycocotools)")
    ax.set_title(f"Accuracy vs {cost}: front = no other variant is both better and cheaper" +
                 ("\nbars: 95% paired bootstrap interval of each variant's difference from the reference" if bars
                  else ""), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def save_figure(fig: object, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` atomically (a reader sees the old PNG or the new one) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()  # type: ignore[attr-defined]
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    tmp.replace(path)
    return path


def pareto_plots(records: list[Record], run_dir: Path) -> dict[str, Path]:
    """Write ``pareto_latency.png`` and ``pareto_size.png`` into ``run_dir``; return those written."""
    out = {}
    for cost, xlabel in (("latency", "p50 end-to-end latency, ms (batch 1)"), ("size", "model size, MB")):
        p = _plot(records, cost, xlabel, run_dir / f"pareto_{cost}.png")
        if p is not None:
            out[f"mAP vs {cost}"] = p
    return out
