"""The latency harness: it owns the clock. Preload, warm up, then time enough runs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from yoloq.backends.base import Runtime
from yoloq.config import LatencyConfig
from yoloq.preprocess import Letterbox, prepare


def _stats(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


@dataclass(frozen=True)
class LatencyStats:
    """End-to-end latency percentiles, throughput and the per-stage split, in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup: int
    seconds: float
    batch: int
    threads: int
    throughput_fps: float
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the record."""
        return asdict(self)


def measure(runtime: Runtime, images: list[np.ndarray], imgsz: int,
            post: Callable[[np.ndarray, list[Letterbox]], Any], cfg: LatencyConfig,
            progress: str | None = None) -> LatencyStats:
    """Time preprocess, inference, postprocess and end-to-end, single stream.

    Runs ``cfg.warmup`` untimed iterations, then at least ``cfg.min_runs`` runs and ``cfg.min_seconds``
    seconds; each run takes the next ``cfg.batch`` preloaded images.

    Args:
        runtime: The loaded model.
        images: Preloaded BGR images (decoded once, before timing).
        imgsz: Input size.
        post: The shared postprocessing (raw output, letterboxes) -> detections.
        cfg: Harness settings.
        progress: Label for the progress bar (None hides it).
    """
    import sys

    from tqdm import tqdm

    from yoloq.progress import enabled

    n = len(images)

    def batch_at(i: int) -> list[np.ndarray]:
        return [images[(i * cfg.batch + j) % n] for j in range(cfg.batch)]

    for i in range(cfg.warmup):
        x, lbs = prepare(batch_at(i), imgsz)
        post(runtime.predict(x), lbs)

    rows: list[tuple[float, float, float, float]] = []
    clock = time.perf_counter
    start = clock()
    hide = progress is None or not enabled()
    with tqdm(total=cfg.min_runs, desc=progress, disable=hide, leave=False, file=sys.stderr, dynamic_ncols=True,
              mininterval=0.5) as pb:
        while len(rows) < cfg.min_runs or clock() - start < cfg.min_seconds:
            b = batch_at(len(rows))
            t0 = clock()
            x, lbs = prepare(b, imgsz)
            t1 = clock()
            raw = runtime.predict(x)
            t2 = clock()
            post(raw, lbs)
            t3 = clock()
            rows.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
            if len(rows) <= cfg.min_runs:
                pb.update(1)
    seconds = clock() - start
    ms = np.asarray(rows) * 1000.0
    e2e = ms[:, 3]
    stages = {name: _stats(ms[:, k]) for k, name in enumerate(("preprocess", "inference", "postprocess"))}
    return LatencyStats(**_stats(e2e), std_ms=float(e2e.std()), min_ms=float(e2e.min()), max_ms=float(e2e.max()),
                        runs=len(rows), warmup=cfg.warmup, seconds=seconds, batch=cfg.batch,
                        threads=cfg.threads, throughput_fps=float(cfg.batch * len(rows) / (ms[:, 3].sum() / 1000.0)),
                        stages=stages)
