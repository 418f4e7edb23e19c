"""What else ran while yoloq measured: one run per output folder at a time, and the CPU that other processes
took during a latency pass (from the OS), so a timing says what disturbed it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Any, Iterator

from yoloq.errors import YoloqError

OUTSIDE_LOAD_FLAG = 0.10  # a latency pass with more outside load than this is flagged in reports


def flag_threshold() -> float:
    """The outside-load share above which a latency pass is flagged: ``$YOLOQ_OUTSIDE_LOAD_FLAG``, else 0.10.

    (The test suite's parallel workers load each other by design and raise it, so that a resumed run there
    keeps its records instead of timing them again.)

    Raises:
        YoloqError: When the variable is set to something that is not a share of the machine (>= 0).
    """
    text = os.environ.get("YOLOQ_OUTSIDE_LOAD_FLAG", str(OUTSIDE_LOAD_FLAG))
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not share >= 0:
        raise YoloqError(f"YOLOQ_OUTSIDE_LOAD_FLAG={text!r}: give the share of the machine above which a latency "
                         "pass is flagged (e.g. 0.10), or unset it")
    return share


@contextlib.contextmanager
def run_lock(run_dir: Path, wait: bool = False) -> Iterator[None]:
    """Hold the run folder for this process: a second yoloq run into it gets one line naming the first's process
    (or, with ``wait``, waits for it). The lock is the OS's (``flock``), so a killed run never leaves it held.

    Raises:
        YoloqError: When another process holds the folder and ``wait`` is false.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        f = open(run_dir / ".lock", "a+")  # noqa: SIM115 - held for the block's duration
    except OSError as e:
        raise YoloqError(f"output folder {run_dir} cannot be written ({e.strerror}); choose another with --out") \
            from None
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise YoloqError(f"{run_dir} is in use by a yoloq run ({holder}); wait for it to finish, pass --wait to "
                             f"wait, or give another folder with --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        yield
    finally:
        f.close()  # closing releases the lock


def _proc_stat() -> tuple[float, float, float] | None:
    """Busy, steal and total CPU seconds of the whole machine since boot (Linux ``/proc/stat``)."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0.0
    busy = user + nice + system + irq + softirq
    return busy / hz, steal / hz, (busy + idle + iowait + steal) / hz


class OutsideLoad:
    """Measures, over a block of code, the share of the machine's CPU time that other processes used (busy time
    not spent by this process) and the share the hypervisor stole; None where the OS does not tell."""

    def __enter__(self) -> OutsideLoad:
        self._stat, self._own = _proc_stat(), self._own_seconds()
        self.result: dict[str, Any] | None = None
        return self

    @staticmethod
    def _own_seconds() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __exit__(self, *exc: object) -> None:
        end = _proc_stat()
        if self._stat is None or end is None:
            return
        busy, steal, total = (b - a for a, b in zip(self._stat, end))
        own = self._own_seconds() - self._own
        if total <= 0:
            return
        share = max(0.0, (busy - own) / total)
        self.result = {"share": round(share, 4), "busy": round(busy / total, 4),
                       "steal": round(max(0.0, steal / total), 4), "flagged": share > flag_threshold(),
                       "source": "/proc/stat"}
