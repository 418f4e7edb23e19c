"""Scoring on an emulated Arm CPU (qemu-user, ``yoloq setup aarch64``): a variant's twin record scored by the runtime's
aarch64 wheel beside its x86 record, the divergence probe, and a bundle's timing script run on x86 and emulated, both
brought into the report. Skipped with the reason where qemu-user or the userland cannot be set up here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, unavailable

from yoloq.config import parse_config
from yoloq.errors import ConfigError

pytestmark = pytest.mark.shared
TWIN = "onnxruntime-int8@cortex-a76"


def test_emulate_setting_names_the_cpu_and_applies_run_wide():
    base = {"model": "m.pt", "data": "coco-mini"}
    cfg = parse_config(base | {"variants": [{"format": "onnxruntime", "precision": "int8", "emulate": "aarch64"},
                                            {"format": "litert", "precision": "int8", "emulate": "cortex-a72"},
                                            {"format": "openvino", "precision": "int8"}]})
    assert [cfg.emulation(v).cpu if cfg.emulation(v) else None for v in cfg.variants] == \
        ["cortex-a76", "cortex-a72", None]
    run_wide = parse_config(base | {"emulate": {"cpu": "cortex-a55"}, "variants": [
        {"format": "onnxruntime", "precision": "int8"}, {"format": "litert", "emulate": "aarch64"}]})
    assert [run_wide.emulation(v).cpu for v in run_wide.variants] == ["cortex-a55", "cortex-a76"]
    with pytest.raises(ConfigError, match="emulate.cpu"):
        parse_config(base | {"variants": [{"format": "onnxruntime", "emulate": {"cpu": "cortex-x1"}}]})
    with pytest.raises(ConfigError, match="emulate.arch"):
        parse_config(base | {"variants": [{"format": "onnxruntime", "emulate": "riscv64"}]})
    plain = parse_config(base | {"variants": [{"format": "onnxruntime", "precision": "int8"}]})
    assert "emulate" not in plain.to_dict() and "emulate" not in plain.to_dict()["variants"][0]


# the emulated detections scored against x86's as ground truth on the run's 4 images (measured 1.000; a runtime fed
# BGR instead of RGB: 0.911), and x86 minus emulated mAP50-95 on them (measured +0.012; fed BGR: +0.065)
EMULATED_AGREEMENT = 0.95
EMULATED_DROP = 0.05


@pytest.fixture(scope="module")
def emulated_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """YOLO11n's ONNX Runtime INT8 at 320 on 4 images, scored on x86 and on an emulated Cortex-A76."""
    from yoloq.emulate.userland import Userland
    from yoloq.errors import BackendUnavailable

    try:
        Userland().setup()
    except BackendUnavailable as e:
        unavailable("yoloq setup aarch64", e)
    tmp = tmp_path_factory.mktemp("emulate")
    cfg = {"model": "yolo11n.pt", "imgsz": 320, "data": {"dataset": "coco-mini", "split": "val2017", "max_images": 4},
           "calibration": {"sources": [{"dataset": "coco-mini", "split": "train2017"}], "images": 8},
           "variants": [{"format": "torch", "precision": "fp32"},
                        {"format": "onnxruntime", "precision": "int8", "emulate": "aarch64"},
                        {"format": "torch", "precision": "fp32", "name": "torch-twin", "emulate": "aarch64"}],
           "latency": {"warmup": 1, "min_runs": 3, "min_seconds": 0.1, "images": 2}, "report": {"bootstrap": 200}}
    path = tmp / "emulate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", str(path), "--out", str(tmp / "run"))
    return {"dir": tmp / "run", "config": path, "proc": proc, "cfg": cfg, "records": _records(tmp / "run")}


def _records(run_dir: Path) -> dict[str, dict]:
    f = run_dir / "records.jsonl"
    lines = f.read_text().splitlines() if f.is_file() else []
    return {r["name"]: r for r in map(json.loads, filter(None, lines))}


@pytest.mark.full  # the Arm userland and emulated scoring: 3-4 min on 2 cores (CI's full tier)
def test_a_twin_is_scored_on_emulated_arm_beside_its_x86_record(emulated_run):
    assert emulated_run["proc"].returncode == 0, emulated_run["proc"].stderr[-2000:]
    recs = emulated_run["records"]
    host, twin = recs["onnxruntime-int8"], recs[TWIN]
    assert twin["status"] == "ok", twin["reason"]
    assert twin["runtime"]["precision_ran"] == "int8 (aarch64 cortex-a76, emulated)"
    assert twin["runtime"]["emulated"]["machine"] == "aarch64"
    assert twin["runtime"]["emulated"]["runtime_versions"]["onnxruntime"] == host["versions"]["onnxruntime"]
    assert twin["latency"] == {} and "no measure" in twin["not_timed"] and host["latency"]["p50_ms"] > 0
    assert twin["artifact"] == host["artifact"] and twin["pair"] == {
        "role": "emulated", "host": "onnxruntime-int8", "arch": "aarch64", "cpu": "cortex-a76"}
    vs = twin["metrics"]["vs_host"]
    assert vs["lo"] <= vs["drop"] <= vs["hi"] and 0.0 <= vs["agreement"] <= 1.0
    # the emulated Arm run reproduces the x86 run's detections on the same images within a stated agreement (Arm's
    # integer kernels round some requantizations differently; 0.973 over coco1k's 500 val images at 640): an
    # emulated runtime that computes something else falls far below it
    assert vs["agreement"] >= EMULATED_AGREEMENT and abs(vs["drop"]) <= EMULATED_DROP, vs
    assert abs(vs["drop"] - (host["metrics"]["map50_95"] - twin["metrics"]["map50_95"])) < 1e-9
    # the reference on the twin's images (here all 4): the emulated score reads against it in the report
    assert vs["reference_map"] == pytest.approx(recs["torch-fp32"]["metrics"]["map50_95"], abs=1e-9)
    div = twin["metrics"]["divergence"]
    assert div["summary"] and div["tensors"] > 50, div  # every int8 tensor of the graph probed on both
    assert vs["identical"] == (div["differ"] == 0)
    skipped = recs["torch-twin@cortex-a76"]
    assert skipped["status"] == "skipped" and "no standalone runtime" in skipped["reason"]
    report = (emulated_run["dir"] / "report.md").read_text()
    assert "On the device's instruction set (emulated)" in report
    assert "| onnxruntime-int8 | aarch64 cortex-a76" in report
    assert "emulated % of ref" in report


@pytest.mark.full  # the Arm userland and emulated scoring: 3-4 min on 2 cores (CI's full tier)
def test_retime_times_every_variant_again_and_keeps_what_was_measured(emulated_run):
    """``yoloq run --retime``: every timed variant gets a new side-by-side pass (new times, float means that a new
    measurement never repeats); the accuracy and the emulated twin are kept, not measured again."""
    before = {n: r["latency"]["mean_ms"] for n, r in _records(emulated_run["dir"]).items() if r["latency"]}
    proc = run_cli("run", str(emulated_run["config"]), "--out", str(emulated_run["dir"]), "--retime")
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = _records(emulated_run["dir"])
    assert before and all(after[n]["latency"]["mean_ms"] != m for n, m in before.items()), before
    assert after[TWIN]["timings_s"]["evaluate"] == emulated_run["records"][TWIN]["timings_s"]["evaluate"]


@pytest.mark.full  # the Arm userland and emulated scoring: 3-4 min on 2 cores (CI's full tier)
def test_the_x86_record_keeps_its_key_without_the_twin(emulated_run, tmp_path):
    cfg = dict(emulated_run["cfg"])
    cfg["variants"] = [{k: x for k, x in v.items() if k != "emulate"} for v in cfg["variants"]]
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", str(path), "--out", str(emulated_run["dir"]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "onnxruntime-int8: already recorded, kept" in proc.stdout + proc.stderr


@pytest.mark.full  # the Arm userland and emulated scoring: 3-4 min on 2 cores (CI's full tier)
def test_bundle_timing_on_x86_and_emulated_goes_into_the_report(emulated_run, tmp_path):
    import subprocess

    from yoloq.paths import shared_root

    bundle = tmp_path / "bundle"
    proc = run_cli("export", str(emulated_run["config"]), "--variant", "onnxruntime-int8", "--out", str(bundle))
    assert proc.returncode == 0, proc.stderr[-2000:]
    images = shared_root() / "datasets" / "coco-mini" / "val2017"
    quick = ["--runs", "3", "--seconds", "0", "--warmup", "1", "--max-images", "2"]
    x86 = subprocess.run([sys.executable, str(bundle / "timing.py"), str(images), *quick, "--threads", "2",
                          "--device-name", "this x86 host", "--out", str(tmp_path / "x86.json")],
                         capture_output=True, text=True, timeout=300)
    assert x86.returncode == 0, x86.stderr[-2000:]
    arm = run_cli("emulate", str(bundle / "timing.py"), str(images), *quick, "--threads", "1", "--emulated",
                  "--out", str(tmp_path / "arm.json"))
    assert arm.returncode == 0, arm.stderr[-2000:]
    a = json.loads((tmp_path / "arm.json").read_text())
    assert a["device"]["arch"] == "aarch64" and a["device"]["emulated"] and a["runs"] >= 3
    assert a["p50_ms"] <= a["p90_ms"] <= a["p99_ms"]
    rep = run_cli("report", str(emulated_run["dir"]), "--device-timings", str(tmp_path / "x86.json"),
                  str(tmp_path / "arm.json"))
    assert rep.returncode == 0, rep.stderr[-2000:]
    recs = _records(emulated_run["dir"])
    timed = recs["onnxruntime-int8"]["device_latency"]
    assert set(timed) == {"this x86 host, 2 threads", f"{a['device']['name']} (emulated), 1 threads"}
    assert all(t["key"] == recs["onnxruntime-int8"]["key"] and isinstance(t["same_bytes"], bool)
               for t in timed.values())
    assert recs["onnxruntime-int8"]["latency"]["p50_ms"] > 0  # this machine's own figure stays
    report = (emulated_run["dir"] / "report.md").read_text()
    assert "## Timed on the devices" in report and "yes: not its speed" in report
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(a | {"variant": "nope"}))
    proc = run_cli("report", str(emulated_run["dir"]), "--device-timings", str(bad))
    assert proc.returncode != 0 and "variant 'nope' is not in" in proc.stderr and "Traceback" not in proc.stderr
    assert Path(bundle / "timing.py").read_text().count("import yoloq") == 0
