"""What a recovery step cost: wall seconds and the process's peak resident memory, for records and tune.md."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@contextmanager
def measured(into: dict[str, Any], key: str) -> Iterator[None]:
    """Time the block and note the peak resident memory after it: ``into[key] = {"s": ..., "peak_rss_mb": ...}``
    (the peak is the process's, so it bounds the step's from above)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        into[key] = {"s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak_rss_mb())}


def export_cost(info: Mapping[str, Any], seconds: float | None) -> tuple[float | None, float | None]:
    """What making an export cost, from its artifact's info: wall seconds (the backend's own figure where it keeps
    one, as an export reused from a cache does, else ``seconds``, the run's) and the peak resident memory in MB of
    what made it (an export in another process: that process tree's; a recovery step here: this process's)."""
    steps = [v for v in (info.get("recovery_cost") or {}).values() if isinstance(v, Mapping)]
    own = info.get("export_seconds")
    peaks = [(info.get("export_memory") or {}).get("peak_mb")] + [v.get("peak_rss_mb") for v in steps]
    peaks = [p for p in peaks if p is not None]
    return (own if own is not None else seconds), (max(peaks) if peaks else None)
