"""The latency harness: it owns the clock. Preload, warm up, then time enough runs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from yoloq.backends.base import Runtime
from yoloq.config import LatencyConfig
from yoloq.preprocess import Letterbox, prepare
from yoloq.progress import counter


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


class _Timer:
    """One runtime's timed iterations: preprocess, inference, postprocess, end to end (seconds)."""

    def __init__(self, runtime: Runtime, images: list[np.ndarray], imgsz: int,
                 post: Callable[[np.ndarray, list[Letterbox]], Any], batch: int) -> None:
        self.runtime, self.images, self.imgsz, self.post, self.batch = runtime, images, imgsz, post, batch
        self.rows: list[tuple[float, float, float, float]] = []
        self.seconds = 0.0
        self._i = 0

    def _next(self) -> list[np.ndarray]:
        n = len(self.images)
        b = [self.images[(self._i * self.batch + j) % n] for j in range(self.batch)]
        self._i += 1
        return b

    def warm(self, runs: int) -> None:
        """Untimed iterations (caches, lazy initialisation, thread pools)."""
        for _ in range(runs):
            x, lbs = prepare(self._next(), self.imgsz)
            self.post(self.runtime.predict(x), lbs)

    def timed(self) -> None:
        """One timed iteration."""
        clock = time.perf_counter
        t0 = clock()
        x, lbs = prepare(self._next(), self.imgsz)
        t1 = clock()
        raw = self.runtime.predict(x)
        t2 = clock()
        self.post(raw, lbs)
        t3 = clock()
        self.rows.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
        self.seconds += t3 - t0

    def stats(self, cfg: LatencyConfig) -> LatencyStats:
        ms = np.asarray(self.rows) * 1000.0
        e2e = ms[:, 3]
        stages = {name: _stats(ms[:, k]) for k, name in enumerate(("preprocess", "inference", "postprocess"))}
        return LatencyStats(**_stats(e2e), std_ms=float(e2e.std()), min_ms=float(e2e.min()), max_ms=float(e2e.max()),
                            runs=len(self.rows), warmup=cfg.warmup, seconds=self.seconds, batch=cfg.batch,
                            threads=cfg.threads,
                            throughput_fps=float(cfg.batch * len(self.rows) / (e2e.sum() / 1000.0)),
                            stages=stages)


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
    timer = _Timer(runtime, images, imgsz, post, cfg.batch)
    timer.warm(cfg.warmup)
    clock = time.perf_counter
    start = clock()
    with counter(progress, cfg.min_runs, "runs") as pb:
        while len(timer.rows) < cfg.min_runs or clock() - start < cfg.min_seconds:
            timer.timed()
            if len(timer.rows) <= cfg.min_runs:
                pb.update(1)
    return timer.stats(cfg)


def measure_interleaved(runtimes: dict[str, tuple[Runtime, Callable[[np.ndarray, list[Letterbox]], Any]]],
                        images: list[np.ndarray], imgsz: int, cfg: LatencyConfig,
                        progress: str | None = None) -> dict[str, LatencyStats]:
    """Time several runtimes side by side: round-robin blocks, so all see the same machine.

    A shared, noisy machine (this one shows 5-30% CPU steal) changes speed over minutes; timing
    variants one after another turns that drift into false speed-ups. Here every round gives each
    runtime one untimed warm-up run and ``cfg.block`` timed runs, in an order rotated each round,
    until each runtime has ``cfg.min_runs`` runs and the pass has ``cfg.min_seconds`` seconds of timed
    runs. The minimum duration bounds the pass, not each runtime: every runtime's samples are spread
    over the whole pass already, and a per-runtime minimum made the fastest variant run 2-3x more
    rounds than the slowest needed (measured: most of a default run's latency pass).
    """
    timers = {name: _Timer(rt, images, imgsz, post, cfg.batch) for name, (rt, post) in runtimes.items()}
    for t in timers.values():
        t.warm(cfg.warmup)
    names = list(timers)
    rnd = 0
    with counter(progress, cfg.min_runs * len(names), "runs") as pb:
        while any(len(t.rows) < cfg.min_runs for t in timers.values()) or \
                sum(t.seconds for t in timers.values()) < cfg.min_seconds:
            for name in names[rnd % len(names):] + names[: rnd % len(names)]:
                t = timers[name]
                t.warm(1)
                for _ in range(cfg.block):
                    t.timed()
                pb.update(sum(min(len(x.rows), cfg.min_runs) for x in timers.values()) - pb.n)
            rnd += 1
    return {name: t.stats(cfg) for name, t in timers.items()}
