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
    for r, (x, y) in zip(ok, pts):
        ax.scatter(x, y, s=70, c=style_of(r.format).color, marker=markers.get(r.precision, "D"),
                   edgecolors="black", linewidths=0.6, zorder=3)
        ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    fx = sorted(pts[i] for i in front)
    ax.plot([p[0] for p in fx], [p[1] for p in fx], "--", c="#d62728", lw=1.4, zorder=2, label="front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mAP50-95 (pycocotools)")
    ax.set_title(f"Accuracy vs {cost}: front = no other variant is both better and cheaper", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp)
    plt.close(fig)
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
