"""Timings that say what disturbed them: one run per output folder, and a latency pass beside a CPU-bound
process flagged in its record and in the report."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli
from test_units import FakeRuntime, rec

from yoloq.config import LatencyConfig
from yoloq.machine_load import OutsideLoad, run_lock
from yoloq.passes import latency_pass
from yoloq.report.table import notes, rows


def _bad_model_config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load(Path("configs/smoke.yaml").read_text()) | {"model": "no-such-model.pt"}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_a_second_run_on_a_busy_folder_gets_one_line(tmp_path: Path):
    out = tmp_path / "run"
    with run_lock(out):
        proc = run_cli("run", str(_bad_model_config(tmp_path)), "--out", str(out), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "in use by a yoloq run (pid " in proc.stderr and "--wait" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_wait_waits_for_the_folder(tmp_path: Path):
    """With --wait the second run blocks until the first lets go, then runs (here: into its bad model)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "yoloq", "run", str(_bad_model_config(tmp_path)), "--out", str(out), "--wait"]
    with run_lock(out):
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        assert proc.poll() is None  # still waiting
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "no-such-model.pt" in err


def _spin() -> list[subprocess.Popen]:
    """CPU-bound processes on about half of this machine's cores."""
    code = "import time\nt = time.time() + 30\nwhile time.time() < t: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(max(1, (os.cpu_count() or 2) // 2))]


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="the OS gives no machine-wide CPU times (/proc/stat)")
def test_a_latency_pass_beside_a_cpu_bound_process_is_flagged(monkeypatch):
    """One core of this machine kept busy by another process: the pass records that outside load (from the OS),
    the record's p50 is marked and the report says why."""
    monkeypatch.delenv("YOLOQ_OUTSIDE_LOAD_FLAG", raising=False)  # the product's threshold, 10%
    cfg = LatencyConfig(warmup=1, min_runs=30, min_seconds=2.0, images=2, block=5)
    images = [np.zeros((64, 48, 3), np.uint8)] * 2
    spinners = _spin()
    try:
        time.sleep(0.5)
        lat = latency_pass({"a": FakeRuntime(0.005), "b": FakeRuntime(0.005)}, {"a": "k1", "b": "k2"}, images, 64,
                           cfg, {"a": lambda raw, lbs: None, "b": lambda raw, lbs: None})
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    load = lat["a"]["outside_load"]
    assert load["source"] == "/proc/stat" and load["flagged"] and load["share"] > 0.2, load
    assert lat["b"]["outside_load"] == load  # one pass, one measurement for all its variants
    records = [rec("torch-fp32", "torch", reference=True), rec("onnxruntime-int8", precision="int8")]
    for r in records:
        r.metrics = {"map50_95": 0.4}
        r.latency = lat["a"]
    assert rows(records)[1]["p50 ms"].endswith("!")
    assert any("other processes took more than 10%" in line for line in notes(records, records[0]))


def test_outside_load_does_not_count_our_own_work():
    t0, c0 = time.perf_counter(), sum(os.times()[:2])
    with OutsideLoad() as load:  # spin until this process has had 0.5 s of CPU (a loaded machine gives it less
        t = time.perf_counter() + 20.0  # than a core: seen, 0.24 s in a second beside five busy processes)
        while sum(os.times()[:2]) - c0 < 0.5 and time.perf_counter() < t:
            pass
    wall, cpu = time.perf_counter() - t0, sum(os.times()[:2]) - c0
    if load.result is None:
        pytest.skip("the OS gives no machine-wide CPU times (/proc/stat)")
    # our own busy core is not outside load: busy - outside is our own CPU time as a share of the machine (however
    # busy other processes kept it meanwhile, e.g. parallel test workers)
    own = load.result["busy"] - load.result["share"]
    assert cpu >= 0.3, cpu  # we did spin
    assert own == pytest.approx(cpu / (wall * (os.cpu_count() or 1)), abs=0.1), (load.result, cpu, wall)


def test_a_bad_flag_threshold_is_one_clear_error(monkeypatch):
    from yoloq.errors import YoloqError
    from yoloq.machine_load import flag_threshold

    monkeypatch.setenv("YOLOQ_OUTSIDE_LOAD_FLAG", "-1")
    with pytest.raises(YoloqError, match="YOLOQ_OUTSIDE_LOAD_FLAG='-1'"):
        flag_threshold()
    monkeypatch.delenv("YOLOQ_OUTSIDE_LOAD_FLAG")
    assert flag_threshold() == 0.10
