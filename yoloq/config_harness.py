"""The timing harnesses' settings: the latency pass (batch 1, one request at a time) and the throughput pass (several
streams in flight). Part of the config stage: it knows no backend."""

from __future__ import annotations

from dataclasses import dataclass

from yoloq.schema import at_least, check


@dataclass(frozen=True)
class LatencyConfig:
    """The latency harness: warm-up, then at least ``min_runs`` runs and ``min_seconds`` seconds.

    ``conf``: the deployment threshold of the timed postprocess (as ``yolo predict``; accuracy keeps ``eval.conf``).
    ``interleave`` times all variants side by side in round-robin blocks of ``block`` runs, so machine drift cannot
    fake a speed-up (``min_seconds`` then bounds the whole pass); ``false`` times each alone for ``min_seconds``."""

    warmup: int = 10
    min_runs: int = 100
    min_seconds: float = 10.0
    threads: int = 2
    batch: int = 1
    images: int = 16
    conf: float = 0.25
    interleave: bool = True
    block: int = 5

    def __post_init__(self) -> None:
        check(0.0 <= self.conf < 1.0, "latency.conf", self.conf, "0 <= conf < 1")
        at_least(self, "latency", block=1, warmup=0, min_runs=1, min_seconds=0, threads=1, batch=1, images=1)


@dataclass(frozen=True)
class StreamsConfig:
    """The throughput pass, after the latency pass: frames per second end to end with each of ``levels`` streams in
    flight (each runtime's own concurrency), the variants side by side in round-robin blocks of ``block`` seconds
    until each has ``seconds`` timed seconds at each level, after ``warmup`` untimed frames per stream. ``fps``: one
    camera's frame rate, for the cameras each variant serves. The images, threads and deployment threshold are the
    latency pass's. ``levels: []`` turns the pass off; a longer pass (``seconds: 10``) narrows the noise.
    ``batches``: batch sizes timed beside the stream counts, one stream whose every inference takes that many frames
    (exports made to take a batch and checked against batch 1; a format with a fixed batch of 1 says so)."""

    levels: tuple[int, ...] = (1, 2, 4)
    batches: tuple[int, ...] = ()
    seconds: float = 0.5  # short by default (a run's wall time); ``seconds: 5`` or more for figures to compare
    block: float = 0.5
    warmup: int = 2
    fps: float = 15.0

    def __post_init__(self) -> None:
        ok = all(isinstance(n, int) and n >= 1 for n in self.levels) and list(self.levels) == sorted(set(self.levels))
        check(ok, "streams.levels", list(self.levels), "stream counts >= 1 in increasing order, e.g. [1, 2, 4], "
              "or [] for no throughput pass")
        ok = all(isinstance(n, int) and n >= 2 for n in self.batches) and \
            list(self.batches) == sorted(set(self.batches))
        check(ok, "streams.batches", list(self.batches), "batch sizes >= 2 in increasing order, e.g. [2, 4, 8] "
              "(batch 1 is the 1-stream level)")
        check(not self.batches or 1 in self.levels, "streams.batches", list(self.batches),
              "batch levels beside a 1-stream level: streams.levels with 1 in it")
        check(self.fps > 0, "streams.fps", self.fps, "> 0 (one camera's frames per second)")
        check(self.block > 0, "streams.block", self.block, "> 0 seconds")
        at_least(self, "streams", seconds=0, warmup=0)
