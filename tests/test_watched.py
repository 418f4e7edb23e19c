"""A toolkit's process watched (yoloq/backends/watched.py): its tree's memory peak per phase, its progress relayed to
the console, its time limit kills the whole tree. Real child processes, a grandchild among them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from yoloq.backends import watched
from yoloq.backends.watched import run_watched, tree_rss_mb

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")

CHILD = r"""
import subprocess, sys, time
def say(phase, n, total):
    print(f"yoloq-progress\t{phase}\t{n}\t{total}", flush=True)
say("small", 1, 2)
time.sleep(0.8)
say("small", 2, 2)
say("big", 0, "")
time.sleep(0.8)
block = bytearray(300 * 1024 * 1024)  # touched: resident
time.sleep(1.2)
del block
# a grandchild holding 200 MB while this process waits: the tree's sum counts it
say("grandchild", 0, "")
subprocess.run([sys.executable, "-c", "b = bytearray(200 * 1024 * 1024); import time; time.sleep(1.2)"])
print("toolkit noise\r", flush=True)
"""


def test_the_peak_of_each_phase_and_the_progress_reach_the_caller(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watched, "QUIET_S", 0.5)  # the grandchild's silent second gets a line of its own
    log = tmp_path / "log.txt"
    run = run_watched([sys.executable, "-c", CHILD], log, 60, "job", "starting")
    assert run.returncode == 0
    err = capsys.readouterr().err
    assert "job: starting" in err and "job: small (2)" in err and "job: big" in err
    assert "GB resident" in err  # the heartbeat of a silent phase
    assert "toolkit noise" in log.read_text()  # the toolkit's own output stays in the log
    phases = run.phase_peak_mb
    assert set(phases) >= {"small", "big", "grandchild"}
    assert phases["big"] >= 300 > phases["small"], phases
    assert phases["grandchild"] >= 200, phases
    assert run.peak_mb == max(phases.values())
    assert run.memory()["peak_mb"] == round(run.peak_mb)


def test_a_time_limit_kills_the_process_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    code = (f"import subprocess, sys, time\np = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(60)'])\nopen({str(pid_file)!r}, 'w').write(str(p.pid))\ntime.sleep(60)")
    t0 = time.perf_counter()
    with pytest.raises(subprocess.TimeoutExpired):
        run_watched([sys.executable, "-c", code], tmp_path / "log.txt", 2, "job", "sleeping")
    assert time.perf_counter() - t0 < 30
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # the kernel reaps it a moment after the kill
        if not Path(f"/proc/{grandchild}").exists() or "State:\tZ" in Path(f"/proc/{grandchild}/status").read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail("the grandchild outlived the time limit")


def test_a_process_that_is_gone_has_no_memory() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert tree_rss_mb(proc.pid) is None


def test_a_killed_run_takes_its_toolkit_process_with_it(tmp_path: Path) -> None:
    """yoloq killed outright (no chance to clean up) while a toolkit runs: the kernel ends the toolkit too."""
    pid_file = tmp_path / "toolkit.pid"
    toolkit = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = ("import sys; from pathlib import Path; from yoloq.backends.watched import run_watched; "
              f"run_watched([sys.executable, '-c', {toolkit!r}], Path({str(tmp_path / 'log.txt')!r}), 120, 'job', 'x')")
    proc = subprocess.Popen([sys.executable, "-c", parent])
    for _ in range(100):
        if pid_file.is_file() and pid_file.read_text():
            break
        time.sleep(0.1)
    toolkit_pid = int(pid_file.read_text())
    proc.kill()
    proc.wait()
    for _ in range(50):
        status = Path(f"/proc/{toolkit_pid}/status")
        if not status.exists() or "State:\tZ" in status.read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail("the toolkit outlived the run that started it")
