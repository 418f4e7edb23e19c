"""A toolkit's process run to its end and watched: its whole process tree's resident memory sampled (the peak, and the
peak of each phase it reports), its progress relayed to yoloq's console with an ETA, a time limit.

A worker reports progress by printing lines ``yoloq-progress<TAB>phase<TAB>n<TAB>total`` (``total`` empty when not
known) to its stdout, which goes to the log with everything else the toolkit prints; :func:`run_watched` reads the
log as it grows. A phase with no line for a minute gets a line of its own (elapsed time and memory), so a long silent
step (a Java converter, a solver) never looks hung.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yoloq.progress import Progress, clock, say

PROGRESS = "yoloq-progress\t"
SAMPLE_S = 0.5  # how often memory is sampled and the log read
QUIET_S = 60  # a phase silent this long gets a line


@dataclass
class Watched:
    """How a watched process ended: its exit code (negative: killed by that signal), wall seconds, the peak of its
    process tree's summed resident memory in MB (None where /proc is not there), and each reported phase's peak
    (sampled every half second: a phase's memory counts from its first progress line to the next phase's)."""

    returncode: int
    seconds: float
    peak_mb: float | None
    phase_peak_mb: dict[str, float] = field(default_factory=dict)

    def memory(self) -> dict[str, Any]:
        """The peaks as a record keeps them (MB, rounded)."""
        return {"peak_mb": None if self.peak_mb is None else round(self.peak_mb),
                "phases_peak_mb": {k: round(v) for k, v in self.phase_peak_mb.items()}}


def tree_rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` and all its descendants, summed (MB); None without Linux's /proc."""
    proc = Path("/proc")
    if not (proc / str(pid)).is_dir():
        return None
    parent: dict[int, int] = {}
    for d in proc.iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    kb = 0
    for p in tree:
        try:
            for line in (proc / str(p) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kb += int(line.split()[1])
                    break
        except (OSError, ValueError):
            continue
    return kb / 1024


def peak_rss_of(pid: int) -> float | None:
    """The peak resident memory (MB) of a process that is still running (Linux's VmHWM); None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def available_mb() -> float | None:
    """Memory the kernel says a new process can take without swapping (MemAvailable, MB); None without /proc."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


class _Relay:
    """Turns a worker's progress lines into yoloq's progress lines (one counter per phase)."""

    def __init__(self, label: str, phase: str) -> None:
        self.label, self.phase = label, phase
        self.counters: dict[str, Progress] = {}
        self.t_phase = self.t_said = time.perf_counter()
        self.buffer = ""
        say(f"  {label}: {phase}")

    def feed(self, text: str) -> None:
        self.buffer += text
        *lines, self.buffer = self.buffer.replace("\r", "\n").split("\n")
        for line in lines:
            if not line.startswith(PROGRESS):
                continue
            parts = line[len(PROGRESS):].split("\t")
            if len(parts) != 3 or not parts[1].isdigit():
                continue
            phase, n, total = parts[0], int(parts[1]), int(parts[2]) if parts[2].isdigit() else None
            if phase != self.phase:
                self.phase, self.t_phase = phase, time.perf_counter()
                say(f"  {self.label}: {phase}" + (f" ({total})" if total else ""))
            if total:
                c = self.counters.get(phase)
                if c is None or n < c.n or c.total != total:  # a new pass of the same phase starts again
                    c = self.counters[phase] = Progress(f"{self.label}: {phase}", total)
                c.update(n - c.n)
            self.t_said = time.perf_counter()

    def heartbeat(self, rss_mb: float | None) -> None:
        now = time.perf_counter()
        if now - self.t_said >= QUIET_S:
            mem = f", {rss_mb / 1024:.1f} GB resident" if rss_mb is not None else ""
            c = self.counters.get(self.phase)
            where = f"{self.phase} done, the next step" if c is not None and c.n >= (c.total or 0) else self.phase
            say(f"  {self.label}: {where}, {clock(now - self.t_phase)} since it began{mem}")
            self.t_said = now


def _die_with_parent() -> None:
    """In the child, before it runs: the kernel kills it when yoloq dies (killed, or ended by a signal it does not
    handle), so a toolkit holding gigabytes never outlives the run that started it."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_watched(argv: list[str], log: Path, timeout_s: float, label: str, phase: str,
                env: dict[str, str] | None = None) -> Watched:
    """Run ``argv`` to its end with its output appended to ``log``, its tree's memory sampled and its progress lines
    relayed as ``label: phase ...``; ``phase`` names the time before its first progress line. Killed (with its
    children) after ``timeout_s``: :class:`subprocess.TimeoutExpired`."""
    relay = _Relay(label, phase)
    peak: float | None = None
    phase_peak: dict[str, float] = {}
    t0 = time.perf_counter()
    with open(log, "a") as out, open(log, errors="replace") as tail:
        tail.seek(0, os.SEEK_END)
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        try:
            while True:
                done = proc.poll() is not None
                relay.feed(tail.read())  # first: the phase a sample belongs to is the one announced before it
                rss = None if done else tree_rss_mb(proc.pid)
                if rss is not None:
                    peak = max(peak or 0.0, rss)
                    phase_peak[relay.phase] = max(phase_peak.get(relay.phase, 0.0), rss)
                if done:
                    break
                relay.heartbeat(rss)
                if time.perf_counter() - t0 > timeout_s:
                    raise subprocess.TimeoutExpired(argv, timeout_s)
                time.sleep(SAMPLE_S)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # the group may be gone already
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for c in relay.counters.values():
                c.close()
    return Watched(proc.returncode, round(time.perf_counter() - t0, 1), peak, phase_peak)

