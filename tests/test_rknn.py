"""Rockchip RKNN: the head split Rockchip's layout needs (exact in float), the side environment's absence as one
line and a skipped record, and a real run through rknn-toolkit2's simulator at imgsz 320 (its environment set up
once, from the repository's pinned requirements; skipped with the reason where it cannot install)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli, side_environment

from yoloq.backends.rknn import sideenv
from yoloq.errors import BackendUnavailable


def _config(tmp_path: Path, variants: list[dict]) -> Path:
    cfg = yaml.safe_load(Path("configs/smoke.yaml").read_text())
    cfg["variants"] = [{"format": "torch", "precision": "fp32"}, *variants]
    cfg["output"] = str(tmp_path / "out")
    cfg["report"] = {"bootstrap": 200, "seed": 0}
    p = tmp_path / "rknn.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _records(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())}


@pytest.mark.shared
@pytest.mark.parametrize("keep", ["decode", "outputs"])
def test_the_npu_body_and_the_cpu_tail_give_the_whole_model(tmp_path, keep):
    """Cut where the head's float part begins, body then tail in ONNX Runtime is the whole model, bit for bit."""
    import onnxruntime as ort

    from yoloq.backends.onnx_base import base_onnx
    from yoloq.backends.rknn.graph import split_head, to_pixels
    from yoloq.models import load_source
    from yoloq.preprocess import prepare, read_image

    src = load_source("yolo11n.pt")
    full = base_onnx(src, 320, tmp_path)
    body, tail, cut = split_head(full, keep, src, tmp_path / keep)
    assert len(cut) == 6 and all("/model.23/" in c for c in cut)  # box and class branch of each of 3 levels
    from conftest import SHARED

    img = next((SHARED / "datasets" / "coco-mini" / "val2017").glob("*.jpg"))
    x, _ = prepare([read_image(img)], 320)
    assert np.array_equal(to_pixels(x).astype(np.float32) / 255.0, x)  # the uint8 pixels the NPU reads are exact
    ref = ort.InferenceSession(str(full)).run(None, {"images": x})[0]
    mid = ort.InferenceSession(str(body)).run(None, {"images": x})
    y = ort.InferenceSession(str(tail)).run(None, dict(zip(cut, mid)))[0]
    assert np.array_equal(y, ref)
    if keep == "decode":  # a block kept float16 by the toolkit's hybrid quantization: its one input and output
        from yoloq.backends.rknn.graph import block_ends
        from yoloq.errors import ConfigError

        assert block_ends(body, ["model.10"]) == [["/model.9/cv2/act/Mul_output_0", "/model.10/cv2/act/Mul_output_0"]]
        with pytest.raises(ConfigError, match="model.99 is not a block"):
            block_ends(body, ["model.99"])


@pytest.mark.shared
def test_without_its_environment_rknn_is_skipped_in_one_line(tmp_path, monkeypatch):
    """No side environment: the RKNN variant is a skipped record naming 'yoloq setup rknn'; the rest runs."""
    monkeypatch.delenv(sideenv.ENV_PYTHON, raising=False)
    monkeypatch.setenv("YOLOQ_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BackendUnavailable, match="yoloq setup rknn"):
        sideenv.python()
    monkeypatch.setenv(sideenv.ENV_PYTHON, str(tmp_path / "no-such-python"))
    with pytest.raises(BackendUnavailable, match="YOLOQ_RKNN_PYTHON"):
        sideenv.python()
    monkeypatch.delenv(sideenv.ENV_PYTHON)
    cfg = _config(tmp_path, [{"format": "rknn", "precision": "int8"}])
    proc = run_cli("run", str(cfg), "--out", str(tmp_path / "out"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = _records(tmp_path / "out")
    assert recs["torch-fp32"]["status"] == "ok"
    assert recs["rknn-int8"]["status"] == "skipped" and "yoloq setup rknn" in recs["rknn-int8"]["reason"]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def rknn_env() -> Path:
    """The side environment: set up from the pinned requirements when it is not yet (skip with the reason when
    it cannot install here)."""
    return side_environment("rknn")


@pytest.mark.shared
@pytest.mark.full  # Rockchip's environment (5.6 GB) and the build take 5 min on 2 cores: CI's full tier sets it up
def test_rknn_fp16_and_int8_are_scored_by_the_simulator(tmp_path, rknn_env):
    """A real run: RKNN FP16 and INT8 built for the RK3588, scored through the one scoring loop (mAP, interval,
    agreement), recorded as simulator runs and not timed here."""
    cfg = _config(tmp_path, [{"format": "rknn", "precision": "fp16"}, {"format": "rknn", "precision": "int8"}])
    proc = run_cli("run", str(cfg), "--out", "out", cwd=tmp_path, timeout=900)  # a relative output folder
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = _records(tmp_path / "out")
    ref = recs["torch-fp32"]["metrics"]["map50_95"]
    for name, keep in (("rknn-fp16", 0.97), ("rknn-int8", 0.85)):
        r = recs[name]
        assert r["status"] == "ok", r["reason"]
        assert r["runtime"]["precision_ran"].endswith("(RKNN simulator, rk3588)")
        assert r["metrics"]["map50_95"] >= keep * ref
        assert 0.5 < r["metrics"]["agreement"]["map50_95"] <= 1.0
        ci = r["metrics"]["map_drop_ci"]
        assert ci["lo"] <= ci["drop"] <= ci["hi"]
        assert not r["latency"] and "simulator" in r["not_timed"]
        folder = tmp_path / "out" / "artifacts" / name / "model"  # what ships: the NPU's model, the CPU's tail
        assert (folder / "model.rknn").stat().st_size > 1e6 and (folder / "tail.onnx").is_file()
    assert recs["rknn-int8"]["artifact_info"]["calibration_used"] == 16
    assert recs["rknn-int8"]["artifact_info"]["export_memory"]["peak_mb"] > 200  # the toolkit's build, measured
    assert recs["rknn-int8"]["size_mb"] < 0.75 * recs["rknn-fp16"]["size_mb"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "int8 (RKNN simulator, rk3588)" in report and "not timed here" in report
    proc = run_cli("explain", str(tmp_path / "out"), "rknn-int8", timeout=600)  # the toolkit's analysis of it
    assert proc.returncode == 0, proc.stderr[-2000:]
    share = float(proc.stdout.split("int8 share: ")[1].split("%")[0])
    assert 90 < share <= 100  # every NPU convolution int8 (the CPU tail: the small DFL convolution, in float)
    assert "| fp32 |" in proc.stdout and "| convert |" in proc.stdout


@pytest.mark.shared
@pytest.mark.parametrize(("family", "nms"), [pytest.param("yolov8n", None, marks=pytest.mark.full),
                                               pytest.param("yolo26n", False, marks=pytest.mark.full)],
                         ids=["yolov8n", "yolo26n-e2e"])
def test_families_through_rknn(tmp_path, rknn_env, family, nms):
    """Random-init YOLOv8n (DFL head) and YOLO26n (no DFL, NMS-free one-to-one branch) through RKNN FP16 and INT8:
    every variant ok, the branch that ran recorded, FP16's detections those of torch FP32."""
    from families import build, config, matched
    from ultralytics import YOLO

    from yoloq.artifacts import cached_artifact
    from yoloq.backends.base import Artifact
    from yoloq.backends.registry import get_backend, resolve_config
    from yoloq.config import EvalConfig, parse_config
    from yoloq.data import load_split
    from yoloq.paths import REPO_ROOT, shared_root
    from yoloq.pipeline import run
    from yoloq.postprocess import postprocess
    from yoloq.preprocess import prepare, read_image
    from yoloq.records import RecordStore

    pt = build(family, tmp_path, YOLO(str(shared_root() / "models" / "yolo11n.pt")).names)
    variants = [{"format": "torch", "precision": "fp32"}, {"format": "rknn", "precision": "fp16"},
                {"format": "rknn", "precision": "int8"}]
    cfg = resolve_config(parse_config(config(pt, tmp_path / "out", variants, nms), REPO_ROOT))
    run(cfg, tmp_path / "out")
    recs = {r.name: r for r in RecordStore(tmp_path / "out").all()}
    assert all(r.ok for r in recs.values()), {n: r.reason for n, r in recs.items()}
    e2e = nms is False
    assert {r.head["branch"] for r in recs.values()} == {"one2one" if e2e else "one2many"}
    post = EvalConfig(conf=0.25, iou=0.7, max_det=300, multi_label=False)
    ref = get_backend("torch").load(Artifact(pt, "torch", "fp32", {"end2end": e2e, "max_det": 300}), 2)
    fp16 = get_backend("rknn").load(cached_artifact(tmp_path / "out" / "artifacts" / "rknn-fp16",
                                                    recs["rknn-fp16"].key), 2)
    sample = load_split(cfg.data, REPO_ROOT).samples[0]
    x, lbs = prepare([read_image(sample.path)], 320)
    a, b = postprocess(ref.predict(x), lbs, post, e2e)[0], postprocess(fp16.predict(x), lbs, post, e2e)[0]
    assert len(a) > 0 and matched(a, b, px=2.0, score_tol=0.05) >= 0.8


ANALYSIS = """layer_name                                                                simulator_error
                                                                      entire              single
                                                                   cos      euc        cos      euc
---------------------------------------------------------------------------------------------------------
[Input] images                                                   1.00000 | 0.00000   1.00000 | 0.00000
[Conv] /model.0/conv/Conv_output_0                               0.99993 | 49.91899  0.99993 | 49.91899
[exSwish] /model.0/act/Mul_output_0                              0.99979 | 56.42297  0.99988 | 44.54723
[Conv] /model.10/m/m.0/attn/qkv/conv/Conv_output_0               0.99101 | 3.12e+01  0.99900 | 12.0
[Conv] /model.23/cv3.2/cv3.2.2/Conv_output_0_int8                0.99712 | 109.56718 0.99970 | 35.46157
"""


def test_the_toolkits_accuracy_analysis_ranks_blocks():
    """Each layer's own (single) error from rknn-toolkit2's error_analysis.txt, the worst per block as an SQNR."""
    from yoloq.backends.rknn.analysis import group_errors, layer_errors

    layers = layer_errors(ANALYSIS)
    assert [(op, cos) for op, _, cos in layers] == [("Input", 1.0), ("Conv", 0.99993), ("exSwish", 0.99988),
                                                     ("Conv", 0.999), ("Conv", 0.9997)]
    ranked = group_errors([layers], "block")
    assert [g.group for g in ranked] == ["model.10", "model.23/cv3.2", "model.0"]
    assert ranked[0].sqnr_db == pytest.approx(-10 * np.log10(2 * (1 - 0.999)))
    assert [g.group for g in group_errors([layers], "layer")][0] == "/model.10/m/m.0/attn/qkv/conv/Conv_output_0"


def test_accuracy_control_ranks_only_the_blocks_not_yet_in_float16():
    """The toolkit's analysis ranks every layer; the blocks a variant already keeps in float16 are not offered again."""
    from types import SimpleNamespace

    from yoloq.backends.rknn.analysis import group_errors, layer_errors
    from yoloq.backends.registry import get_backend

    ranked = group_errors([layer_errors(ANALYSIS)], "block")
    ctx = SimpleNamespace(option=lambda k: {"float_blocks": ["model.10"]}.get(k))
    left = get_backend("rknn").in_int8(ctx, ranked)
    assert [g.group for g in left] == ["model.23/cv3.2", "model.0"]
    assert get_backend("rknn").keep_float(left[:1]) == {"float_blocks": ["model.23/cv3.2"]}


@pytest.mark.shared
@pytest.mark.full  # the default tier scores RKNN through the simulator once
def test_rknn_sensitivity_and_bundle(tmp_path, rknn_env):
    """yoloq sensitivity ranks an RKNN INT8 variant's blocks by the toolkit's analysis (calibration images only);
    yoloq export writes a board bundle: model.rknn, the CPU tail, and a predict.py on rknn-toolkit-lite2."""
    cfg = _config(tmp_path, [{"format": "rknn", "precision": "int8"}])
    proc = run_cli("sensitivity", str(cfg), "--variant", "rknn-int8", "--images", "2", "--out", str(tmp_path / "s"),
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "s" / "sensitivity-rknn-int8-block" / "sensitivity.md").read_text()
    assert "| model.10 " in table and "| model.23/cv3.0 " in table
    proc = run_cli("export", str(cfg), "--variant", "rknn-int8", "--out", str(tmp_path / "b"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bundle = tmp_path / "b"
    assert (bundle / "rknn-int8" / "model.rknn").stat().st_size > 1e6 and (bundle / "rknn-int8" / "tail.onnx").is_file()
    predict = (bundle / "predict.py").read_text()
    compile(predict, "predict.py", "exec")
    assert "RKNNLite" in predict and "rknn-toolkit-lite2" in (bundle / "requirements.txt").read_text()
    assert json.loads((bundle / "export.json").read_text())["artifact_info"]["target_platform"] == "rk3588"


@pytest.mark.shared
@pytest.mark.full  # tune itself is tested on ONNX Runtime in the default tier
def test_yoloq_tune_chooses_among_rknn_settings(tmp_path, rknn_env):
    """yoloq tune over RKNN INT8's candidates on tuning images (coco1k tune, 8 images at 320), the block the
    toolkit's analysis ranks worst in float16 among them: every candidate scored through the simulator, none
    timed here, one chosen, a tuned.yaml carrying it."""
    cfg = yaml.safe_load(_config(tmp_path, [{"format": "rknn", "precision": "int8"}]).read_text())
    cfg["tune"] = {"data": {"dataset": "coco1k", "split": "tune", "max_images": 8}, "first_images": 8,
                   "bootstrap": 100, "sensitivity": [1], "sensitivity_images": 1}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_cli("tune", str(path), "--out", str(tmp_path / "t"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = json.loads((tmp_path / "t" / "tune.json").read_text())["trials"]
    assert [t["candidate"] for t in trials] == ["default", "hybrid", "kl", "head-outputs", "worst1"]
    assert trials[-1]["options"]["float_blocks"][0].startswith("model.")  # the block ranked worst, in float16
    assert all(t["status"] == "ok" and t["images"] == 8 and t["p50_ms"] is None for t in trials)
    assert sum(t["chosen"] for t in trials) == 1
    assert "not timed here" in (tmp_path / "t" / "tuned.yaml").read_text()
