"""The throughput harness: frames per second with several streams in flight, end to end, side by side.

Each stream is one thread that takes the next preloaded image, letterboxes it, runs it on its own runtime (a
session, an interpreter, or an infer request of one model compiled for throughput) and applies the deployment
NMS, one frame after another: a camera's loop. ``streams`` such loops run at once; the harness owns the clock.
A batch level is one loop whose every inference takes ``batch`` frames at once (a recorder batching its cameras):
each of those frames counts, and each waits for the whole batch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from yoloq.backends.base import Runtime
from yoloq.config import StreamsConfig
from yoloq.preprocess import Letterbox, prepare
from yoloq.progress import counter

Post = Callable[[np.ndarray, list[Letterbox]], Any]


@dataclass(frozen=True)
class StreamLevel:
    """One variant with ``streams`` streams in flight: frames per second over the timed seconds, and each frame's
    end-to-end time (letterbox, inference, NMS; waiting for a core included) as percentiles."""

    streams: int
    fps: float
    p50_ms: float
    p90_ms: float
    frames: int
    seconds: float
    batch: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the record."""
        return asdict(self)


class _Cell:
    """One variant at one stream count: its runtimes (one per stream), its frames and timed seconds so far."""

    def __init__(self, runtimes: Sequence[Runtime], post: Post, images: list[np.ndarray], imgsz: int,
                 model_only: bool = False, batch: int = 1) -> None:
        self.runtimes, self.post, self.images, self.imgsz, self.batch = list(runtimes), post, images, imgsz, batch
        self.inputs = [prepare(self._group(i), imgsz)[0] for i in range(0, len(images), batch)] \
            if model_only else None
        self.frame_ms: list[float] = []
        self.seconds = 0.0
        self.warmed = False
        self._next = [k * max(1, len(images) // max(1, len(self.runtimes))) for k in range(len(self.runtimes))]

    def _group(self, i: int) -> list[np.ndarray]:
        return [self.images[(i + j) % len(self.images)] for j in range(self.batch)]

    def _frame(self, k: int) -> None:
        i = self._next[k] % len(self.images)
        self._next[k] += self.batch
        if self.inputs is not None:  # the model alone, as benchmark_app times it
            self.runtimes[k].predict(self.inputs[(i // self.batch) % len(self.inputs)])
            return
        x, lbs = prepare(self._group(i), self.imgsz)
        self.post(self.runtimes[k].predict(x), lbs)

    def block(self, seconds: float, warmup: int) -> None:
        """All streams at once for ``seconds`` (after ``warmup`` untimed frames each the first time, one at every
        later block, as the latency pass warms each runtime again at each switch): each keeps starting frames until
        the time is up; the block lasts until its last frame ends."""
        warm = min(warmup, 1) if self.warmed else warmup
        self.warmed = True
        start: list[float] = []
        gate = threading.Barrier(len(self.runtimes), action=lambda: start.append(time.perf_counter()))
        times: list[list[float]] = [[] for _ in self.runtimes]
        ends = [0.0] * len(self.runtimes)
        errors: list[BaseException] = []

        def loop(k: int) -> None:
            try:
                for _ in range(warm):
                    self._frame(k)
                gate.wait()
                clock, stop = time.perf_counter, start[0] + seconds
                t = clock()
                while t < stop:
                    self._frame(k)
                    t1 = clock()
                    times[k] += [(t1 - t) * 1000.0] * self.batch  # each frame of the batch waited for all
                    t = t1
                ends[k] = t
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)
                gate.abort()

        threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(len(self.runtimes))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:  # the stream that failed, not the others the broken barrier released
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        self.seconds += max(ends) - start[0]
        self.frame_ms += [t for ts in times for t in ts]

    def level(self) -> StreamLevel:
        ms = np.asarray(self.frame_ms)
        return StreamLevel(streams=len(self.runtimes), fps=len(ms) / self.seconds if self.seconds else 0.0,
                           p50_ms=float(np.percentile(ms, 50)) if len(ms) else 0.0,
                           p90_ms=float(np.percentile(ms, 90)) if len(ms) else 0.0,
                           frames=len(ms), seconds=round(self.seconds, 3), batch=self.batch)


Level = int | tuple[int, int]  # a stream count (batch 1), or (streams, batch)


def level_of(k: Level) -> tuple[int, int]:
    """(streams, batch) of a level key."""
    return k if isinstance(k, tuple) else (k, 1)


def level_name(k: Level) -> str:
    """A level as the record keys it: the stream count ("2"), or "batch 4"."""
    streams, batch = level_of(k)
    return str(streams) if batch == 1 else f"batch {batch}"


def measure_streams(variants: dict[str, tuple[dict[Level, Sequence[Runtime]], Post]], images: list[np.ndarray],
                    imgsz: int, cfg: StreamsConfig, progress: str | None = None,
                    model_only: bool = False) -> dict[str, list[StreamLevel]]:
    """Frames per second of every variant at every stream count, side by side.

    Every round gives each (variant, stream count) one block of ``cfg.block`` seconds, in an order rotated each
    round, until each has ``cfg.seconds`` timed seconds: machine drift spreads over all of them alike, as in the
    latency pass.

    Args:
        variants: Per variant name, its runtimes per level (a stream count, or (streams, batch) for runtimes that
            take ``batch`` images per inference; one runtime per stream) and its timed postprocess.
        images: Preloaded BGR images (decoded once, before timing).
        imgsz: Input size.
        cfg: The pass's settings.
        progress: Label for the progress bar (None hides it).
        model_only: Time the model alone on letterboxed inputs made before timing (no letterbox, no NMS): what
            a runtime's own benchmark tool measures, for comparing with it.

    Returns:
        Per variant name, one :class:`StreamLevel` per level: stream counts in increasing order, then batches.
    """
    cells = {(name, level_of(n)): _Cell(rts, post, images, imgsz, model_only, level_of(n)[1])
             for name, (by_level, post) in variants.items()
             for n, rts in sorted(by_level.items(), key=lambda kv: level_of(kv[0])[::-1])}
    order = list(cells)
    rnd = 0
    with counter(progress, len(order), "levels") as pb:
        while any(c.seconds < cfg.seconds or not c.frame_ms for c in cells.values()):
            for key in order[rnd % len(order):] + order[: rnd % len(order)]:
                if cells[key].seconds < cfg.seconds or not cells[key].frame_ms:
                    cells[key].block(cfg.block, cfg.warmup)
            pb.update(sum(c.seconds >= cfg.seconds for c in cells.values()) - pb.n)
            rnd += 1
    out: dict[str, list[StreamLevel]] = {}
    for (name, _), cell in cells.items():
        out.setdefault(name, []).append(cell.level())
    return out


def cameras(levels: list[dict[str, Any]], fps: float, batches: bool = True) -> dict[str, Any] | None:
    """How many cameras of ``fps`` frames per second a variant's measured curve serves: its best level's frames
    per second over ``fps`` (rounded down), with that level (streams, batch) and its per-frame p90. ``batches``
    False: the stream counts at batch 1 only. None when unmeasured."""
    levels = [lv for lv in levels if batches or lv.get("batch", 1) == 1]
    if not levels:
        return None
    best = max(levels, key=lambda lv: lv["fps"])
    return {"cameras": int(best["fps"] // fps), "streams": best["streams"], "batch": best.get("batch", 1),
            "fps": best["fps"], "p90_ms": best["p90_ms"]}
