"""The variant matrix on a real Ray cluster: a head and a second node (resource "edge"), each started
with ``ray start`` on 127.0.0.1 only, the driver as ``yoloq run --ray``.

What must hold: the same mAP as the local smoke run (the same variant keys, the detections of three
shards merged before one COCOeval); targeted variants timed on the node with the resource; a driver
killed mid-run resumes with nothing lost; a worker node killed mid-run still lets the run finish,
with nothing already recorded lost. Each cluster stops by itself (a watchdog) and at the test's end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import SHARED, run_cli, unavailable
from raycluster import LocalCluster, free_port, listening_outside_loopback

from yoloq.paths import REPO_ROOT

try:
    import ray  # noqa: F401 - an optional extra: its absence skips this module (fails it in CI, which installs it)
except ImportError:
    unavailable("Ray", 'an optional extra: pip install -e ".[dev,ray]"')
pytestmark = pytest.mark.shared

CONFIG = "configs/ray-smoke.yaml"
NAMES = ("torch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "openvino-int8")
TARGETED = ("onnxruntime-int8", "openvino-int8")

AT_THE_END = ("map_drop_ci", "agreement")  # computed by finalize, once every variant has run


@pytest.fixture
def cluster():
    c = LocalCluster(limit_s=900)
    try:
        c.start("head", cpus=1)
        c.start("edge", cpus=1, resources={"edge": 1})
        yield c
    finally:
        c.stop()


def _records(out: Path) -> dict[str, dict]:
    f = out / "records.jsonl"
    rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.is_file() else []
    return {r["name"]: r for r in rows}


def _driver(c: LocalCluster, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "yoloq", "run", CONFIG, "--ray", c.address, "--out", str(out), "--shard-images", "5"]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=dict(c.env(), PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _until_first_record(proc: subprocess.Popen, out: Path, limit_s: float = 600) -> list[str]:
    """Read the driver's output until a record is written (a 'mAP50-95' line); returns the lines read."""
    lines, end = [], time.time() + limit_s
    for line in proc.stdout:
        lines.append(line)
        if "mAP50-95" in line and _records(out):
            return lines
        assert time.time() < end, "".join(lines[-40:])
    raise AssertionError("the driver ended before recording a variant:\n" + "".join(lines[-40:]))


def _finish(proc: subprocess.Popen, head: list[str], limit_s: float = 600) -> str:
    rest, _ = proc.communicate(timeout=limit_s)
    return "".join(head) + rest


def _nodes(c: LocalCluster) -> dict[str, dict]:
    """Node id -> resources, as the cluster reports them (a short driver of its own)."""
    code = (f"import json, ray; ray.init(address={c.address!r}, log_to_driver=False, logging_level='ERROR'); "
            "print(json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))")
    p = subprocess.run([sys.executable, "-c", code], env=c.env(), capture_output=True, text=True, timeout=120)
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.full  # a real cluster run (2-3 min on 2 cores); the default tier checks the --ray flag's errors
def test_cluster_run_matches_local_times_on_target_and_resumes_after_driver_crash(cluster, smoke_run, tmp_path):
    out = tmp_path / "ray"
    nodes = _nodes(cluster)
    edge = next(n for n, res in nodes.items() if res.get("edge"))
    assert len(nodes) == 2 and listening_outside_loopback(cluster.pids()) == []

    # the driver is killed (SIGKILL) once its first record is written, then run again: it resumes
    proc = _driver(cluster, out)
    head = _until_first_record(proc, out)
    before = _records(out)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc = _driver(cluster, out)
    log = _finish(proc, [])
    assert proc.returncode == 0, log[-4000:]
    assert "Traceback" not in log
    recs = _records(out)
    assert set(recs) == set(NAMES)
    for name, r in before.items():  # nothing already recorded is lost or redone
        measured = {k: v for k, v in r["metrics"].items() if k not in AT_THE_END}
        assert recs[name]["created"] == r["created"], name
        assert {k: v for k, v in recs[name]["metrics"].items() if k not in AT_THE_END} == measured, name
        assert f"{name}: already recorded, kept" in log
    assert "export submitted" in "".join(head)

    local = smoke_run["records"]
    for name in NAMES:
        r = recs[name]
        assert r["status"] == "ok", (name, r["reason"])
        ex = r["execution"]
        assert ex["engine"] == "ray" and ex["node"] in nodes and ex["accuracy"]["shards"] == 3
        assert ex["machine"]["cpu"] and ex["versions"]["onnxruntime"] and r["machine"]["id"]
        # one COCOeval over the merged shards: the local run's figure, to the last digit
        assert r["key"] == local[name]["key"], name
        assert r["metrics"]["map50_95"] == local[name]["metrics"]["map50_95"], name
        assert r["metrics"]["per_class"] == local[name]["metrics"]["per_class"], name
        assert r["latency"]["runs"] >= 10
        assert (ex["node"] == edge) == (name in TARGETED), (name, ex["node"], edge)
    assert recs["onnxruntime-int8"]["latency"]["group"] == recs["openvino-int8"]["latency"]["group"]  # side by side
    assert recs["torch-fp32"]["latency"]["group"] != recs["openvino-int8"]["latency"]["group"]
    assert (out / "report.md").is_file() and (out / "evaldata" / "openvino-int8.npz").is_file()
    assert listening_outside_loopback(cluster.pids()) == []


@pytest.mark.full  # a second cluster (1.5 min)
def test_worker_node_killed_mid_run_finishes_with_nothing_lost(cluster, smoke_run, tmp_path):
    out = tmp_path / "fault"
    proc = _driver(cluster, out)
    running, end = [], time.time() + 600
    while not running and proc.poll() is None and time.time() < end:
        running = cluster.busy("edge", ("ray::export", "ray::score_shard"))
        time.sleep(0.05)
    assert running, "no task ever ran on the edge node"
    before = _records(out)
    assert cluster.kill("edge") > 0  # the node with the target resource, mid-task
    log = _finish(proc, [])
    assert proc.returncode in (0, 1), log[-4000:]
    assert "Traceback" not in log
    recs = _records(out)
    assert set(recs) == set(NAMES), log[-4000:]
    for name, r in before.items():
        assert recs[name]["created"] == r["created"], name
        assert {k: v for k, v in recs[name]["metrics"].items() if k not in AT_THE_END} == \
            {k: v for k, v in r["metrics"].items() if k not in AT_THE_END}, name
    local = smoke_run["records"]
    for name, r in recs.items():
        # export and accuracy tasks on the dead node were re-run on the head: the same figure
        assert r["metrics"]["map50_95"] == local[name]["metrics"]["map50_95"], (name, r["reason"])
        if name in TARGETED:  # its latency needs the resource only the dead node had
            assert r["status"] in ("skipped", "failed") and "edge" in r["reason"], (name, r["status"], r["reason"])
        else:
            assert r["status"] == "ok", (name, r["reason"])


def test_ray_flag_without_a_cluster_is_one_line(tmp_path):
    proc = run_cli("run", CONFIG, "--ray", f"127.0.0.1:{free_port()}", "--out", str(tmp_path), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "no Ray cluster at '127.0.0.1:" in proc.stderr


def test_target_is_validated_and_left_untimed_by_a_local_run(tmp_path):
    from yoloq.config import parse_config
    from yoloq.errors import ConfigError

    base = {"model": "yolo11n.pt", "data": "coco-mini", "variants": [{"format": "torch", "target": "CPU"}]}
    with pytest.raises(ConfigError, match="variant.target"):
        parse_config(base)
    cfg = parse_config(dict(base, variants=[{"format": "torch", "target": "jetson-orin"}]))
    assert cfg.variants[0].target == "jetson-orin"
    assert "target" in cfg.to_dict()["variants"][0]
    assert "target" not in parse_config(dict(base, variants=[{"format": "torch"}])).to_dict()["variants"][0]

    data = yaml.safe_load((REPO_ROOT / CONFIG).read_text())
    data["variants"] = [{"format": "torch", "precision": "fp32"},
                        {"format": "torch", "precision": "fp32", "name": "torch-on-edge", "target": "edge"}]
    data["model"] = str(SHARED / "models" / "yolo11n.pt")
    data["data"]["max_images"] = 4
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(data))
    proc = run_cli("run", str(conf), "--out", str(tmp_path / "run"), cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = _records(tmp_path / "run")
    assert recs["torch-fp32"]["status"] == "ok" and recs["torch-fp32"]["latency"]["runs"] >= 10
    edge = recs["torch-on-edge"]
    assert edge["status"] == "skipped" and "target 'edge'" in edge["reason"] and "--ray" in edge["reason"]
    assert edge["metrics"]["map50_95"] == recs["torch-fp32"]["metrics"]["map50_95"] and not edge["latency"]
    # run again: the targeted variant waits for its node, its accuracy is not measured again
    proc = run_cli("run", str(conf), "--out", str(tmp_path / "run"), cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch-on-edge: already recorded, kept" in proc.stdout + proc.stderr
    again = _records(tmp_path / "run")["torch-on-edge"]
    assert again["created"] == edge["created"] and again["status"] == "skipped"
