"""What a recovery step cost: wall seconds and the process's peak resident memory, for records and tune.md."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator


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
