"""Sony IMX500: YOLO11n quantized by Sony's MCT for the IMX500 in its own environment (``yoloq setup imx500``), the
camera's package made by imxconv-pt, the quantized model scored here in ONNX Runtime (simulated); its bundle's
predict.py runs that model alone; YOLOv8n (random init) goes through the same export; YOLO26n is a skipped record
naming what MCT's IMX export supports. One run of YOLO11n at imgsz 320 on 8 calibration images (the
mixed-precision search on 2: plain, with GPTQ, distilled for the sensor first, and trained by MCT's QAT) serves
the YOLO11n tests. Skipped with the reason where Sony's tools cannot be set up; the distillation for the sensor's
arithmetic is also tested without them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SHARED, run_cli, side_environment, unavailable

from yoloq.errors import BackendUnavailable

pytestmark = pytest.mark.shared


def _config(tmp: Path, model: str, out: Path, variants: list[dict]) -> Path:
    cfg = yaml.safe_load(Path("configs/smoke.yaml").read_text())
    cfg |= {"model": model, "variants": variants, "output": str(out), "data": cfg["data"] | {"max_images": 4},
            "calibration": cfg["calibration"] | {"images": 8},
            "latency": {"warmup": 1, "min_runs": 3, "min_seconds": 0, "threads": 2, "images": 1}}
    path = tmp / f"{Path(model).stem}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def sony_tools() -> None:
    """Sony's tools set up (their environment, Java 17+), else the test is skipped with the reason."""
    from yoloq.backends.registry import get_backend

    try:
        get_backend("imx500").version()
    except BackendUnavailable as e:
        unavailable("yoloq setup imx500", e)
    side_environment("imx500")
    from yoloq.backends.imx500.backend import java_version

    if java_version() < 17:
        unavailable("Java 17 for imxconv-pt", "imxconv-pt needs Java 17 or later (apt-get install "
                    "openjdk-17-jre-headless; .ci/run installs it)")


@pytest.fixture(scope="module")
def imx(tmp_path_factory: pytest.TempPathFactory, sony_tools: None) -> dict:
    """A run of torch FP32 and IMX500 INT8 into a bundle's work folder (the bundle then reuses that export)."""
    tmp = tmp_path_factory.mktemp("imx500")
    cfg = _config(tmp, "yolo11n.pt", tmp / "bundle" / "work", [{"format": "torch", "precision": "fp32"},
                                                              {"format": "imx500", "precision": "int8",
                                                               "options": {"mixed_precision_images": 2}},
                                                              {"format": "imx500", "precision": "int8",
                                                               "name": "imx500-gptq",
                                                               "options": {"mixed_precision_images": 2,
                                                                           "gptq_epochs": 3, "gptq_images": 6}},
                                                              {"format": "imx500", "precision": "int8",
                                                               "name": "imx500-distilled",
                                                               "options": {"mixed_precision_images": 2,
                                                                           "distill_steps": 20}},
                                                              {"format": "imx500", "precision": "int8",
                                                               "name": "imx500-qat",
                                                               "options": {"mixed_precision_images": 2,
                                                                           "qat_steps": 30}}])
    proc = run_cli("run", str(cfg), "--out", str(tmp / "bundle" / "work"), timeout=3600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    recs = {r["name"]: r for r in map(json.loads, (tmp / "bundle" / "work" / "records.jsonl").read_text().splitlines())}
    return {"tmp": tmp, "cfg": cfg, "records": recs}


@pytest.mark.full  # Sony's toolkit takes 4-6 min even at 320: full tier (and CI's own IMX500 step)
def test_imx500_int8_is_scored_by_simulation_and_keeps_torchs_detections(imx):
    """The record: ok, ran as the simulated IMX500, no latency (with the reason), the camera package beside the
    quantized ONNX, NMS inside the model; its detections on evaluation images are torch FP32's. MCT's quantizer ops
    and the standard ops the simulation runs them as give the same outputs bit for bit on those images."""
    from yoloq.artifacts import cached_artifact
    from yoloq.backends.base import Artifact
    from yoloq.backends.imx500.backend import Imx500Runtime
    from yoloq.backends.imx500.simulation import identical
    from yoloq.backends.registry import get_backend
    from yoloq.config import EvalConfig
    from yoloq.postprocess import postprocess
    from yoloq.preprocess import prepare, read_image

    rec, ref = imx["records"]["imx500-int8"], imx["records"]["torch-fp32"]
    assert rec["status"] == "ok", rec["reason"]
    assert "simulated on CPU" in rec["runtime"]["precision_ran"]
    assert "standard ONNX ops" in rec["runtime"]["precision_ran"]
    assert rec["latency"] is None or not rec["latency"].get("p50_ms")
    assert "IMX500 sensor" in json.dumps(rec)
    info = rec["artifact_info"]
    assert info["head"]["nms_in_model"] and info["calibration_used"] == 8 and info["camera_package"] == "packerOut.zip"
    assert info["simulation"]["identical"] and info["simulation"]["activations_rewritten"] > 100
    folder = imx["tmp"] / "bundle" / "work" / "artifacts" / "imx500-int8"
    art = cached_artifact(folder, rec["key"])
    assert (Path(art.path) / "packerOut.zip").stat().st_size > 100_000 and (Path(art.path) / "labels.txt").is_file()
    assert rec["metrics"]["map50_95"] >= 0.80 * ref["metrics"]["map50_95"]
    runtime = get_backend("imx500").load(art, 2)
    mct_ops = Imx500Runtime(next(Path(art.path).glob("*.onnx")), 2)  # MCT's own Python ops
    torch_rt = get_backend("torch").load(Artifact(SHARED / "models" / "yolo11n.pt", "torch", "fp32",
                                                  {"end2end": False, "max_det": 300}), 2)
    post = EvalConfig(conf=0.25, iou=0.7, max_det=300, multi_label=False)
    found = kept = 0
    for p in sorted((SHARED / "datasets" / "coco-mini" / "val2017").glob("*.jpg"))[:4]:
        x, lbs = prepare([read_image(p)], 320)
        y = runtime.predict(x)
        assert identical(runtime.outputs(x), mct_ops.outputs(x))
        assert y.shape == (1, 300, 6) and np.isfinite(y).all()
        a, b = postprocess(torch_rt.predict(x), lbs, post)[0], postprocess(y, lbs, post)[0]
        found, kept = found + len(a), kept + _kept(a, b)
    # int8 moves boxes and scores a little: each confident torch detection must be found (same class, IoU >= 0.5)
    assert found > 0 and kept >= 0.9 * found, f"IMX500 INT8 found {kept} of torch FP32's {found} detections"


def _weights(imx: dict, rec: dict) -> dict[str, np.ndarray]:
    """The convolution weights of a variant's MCT-quantized ONNX in the fixture's run."""
    import onnx
    from onnx import numpy_helper

    from yoloq.artifacts import cached_artifact

    art = cached_artifact(imx["tmp"] / "bundle" / "work" / "artifacts" / rec["name"], rec["key"])
    model = onnx.load(str(next(Path(art.path).glob("*.onnx"))))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.dims and len(t.dims) == 4}


@pytest.mark.full  # Sony's toolkit takes 4-6 min even at 320: full tier (and CI's own IMX500 step)
def test_gptq_learns_from_the_fp32_model_and_each_step_is_watched(imx):
    """MCT's GPTQ at a budget (3 passes over 6 of the 8 calibration images): its loss against the FP32 model falls
    from the first pass to the last, the weights it rounds differ from plain PTQ's, and both exports carry what they
    cost: the peak memory of MCT's process and, after it ended, of imxconv-pt's, each phase named."""
    ptq, gptq = imx["records"]["imx500-int8"], imx["records"]["imx500-gptq"]
    assert gptq["status"] == "ok", gptq["reason"]
    learned = gptq["artifact_info"]["gptq"]
    assert learned["epochs"] == 3 and learned["images"] == 6 and len(learned["loss_by_epoch"]) == 3
    assert learned["loss_by_epoch"][-1] < learned["loss_by_epoch"][0], learned
    assert "gptq" not in ptq["artifact_info"]

    a, b = _weights(imx, ptq), _weights(imx, gptq)
    assert a.keys() == b.keys() and any(not np.array_equal(a[k], b[k]) for k in a)
    # an export reused from $YOLOQ_CACHE carries what it cost when it was made (one made before yoloq measured it: none)
    for rec in [gptq] + [ptq] * bool(ptq["artifact_info"].get("export_memory")):
        memory = rec["artifact_info"]["export_memory"]
        assert memory and memory["quantize"]["peak_mb"] > 500 and memory["convert"]["peak_mb"] > 500, memory
        assert memory["peak_mb"] == max(memory["quantize"]["peak_mb"], memory["convert"]["peak_mb"])
        assert "mixed-precision search (layers scored)" in memory["quantize"]["phases_peak_mb"]
    assert "GPTQ (images x epochs)" in gptq["artifact_info"]["export_memory"]["quantize"]["phases_peak_mb"]


@pytest.mark.full  # Sony's toolkit takes 4-6 min even at 320: full tier (and CI's own IMX500 step)
def test_a_model_distilled_for_the_sensor_is_what_mct_quantizes(imx):
    """``distill_steps``: the FP32 model distilled through the IMX500's arithmetic first (its held-out loss against
    the FP32 model falls), then MCT quantizes that checkpoint: its weights differ from plain PTQ's, the record
    carries what distillation reached and cost, and the export's time includes it."""
    ptq, distilled = imx["records"]["imx500-int8"], imx["records"]["imx500-distilled"]
    assert distilled["status"] == "ok", distilled["reason"]
    info = distilled["artifact_info"]
    result, cost = info["distill_result"], info["recovery_cost"]["distill"]
    assert result["steps"] == 20 and result["kept"] and result["held_out_loss_after"] < result["held_out_loss_before"]
    assert result["layers"] > 80 and cost["s"] > 0 and cost["peak_rss_mb"] > 500, (result, cost)
    assert info["export_seconds"] >= cost["s"] and "distill_result" not in ptq["artifact_info"]

    a, b = _weights(imx, ptq), _weights(imx, distilled)
    assert a.keys() == b.keys() and sum(not np.array_equal(a[k], b[k]) for k in a) > len(a) // 2


@pytest.mark.full  # Sony's toolkit takes 4-6 min even at 320: full tier (and CI's own IMX500 step)
def test_mcts_qat_trains_the_model_through_the_quantizers_the_export_keeps(imx):
    """``qat_steps``: MCT's QAT in place of its post-training quantization (30 steps on the 8 calibration images):
    the quantized layers' weights and biases train (the thresholds stay MCT's), the losses against the FP32 model
    before and after are measured, the exported weights are the learned ones where the held-out images say training
    helped (else PTQ's, unchanged), and the record carries what it reached and cost, the training a phase of the
    export."""
    ptq, qat = imx["records"]["imx500-int8"], imx["records"]["imx500-qat"]
    assert qat["status"] == "ok", qat["reason"]
    info = qat["artifact_info"]
    result, cost = info["qat_result"], info["recovery_cost"]["qat"]
    assert result["steps"] == 30 and result["train_images"] == 4 and result["held_out_images"] == 4, result
    assert 2_000_000 < result["parameters"] < 3_000_000, result  # YOLO11n's weights and biases, not its thresholds
    losses = ("train_loss_before", "train_loss_after", "held_out_loss_before", "held_out_loss_after")
    assert all(0 < result[k] < 1 for k in losses), result  # measured; 30 steps do not always lower them at 320
    assert result["kept"] == (result["held_out_loss_after"] < result["held_out_loss_before"])
    assert cost["s"] > 0 and cost["peak_rss_mb"] > 500 and "qat_result" not in ptq["artifact_info"]
    assert "QAT (steps)" in info["export_memory"]["quantize"]["phases_peak_mb"]

    a, b = _weights(imx, ptq), _weights(imx, qat)
    changed = sum(not np.array_equal(a[k], b[k]) for k in a)
    assert a.keys() == b.keys() and (changed > len(a) // 2 if result["kept"] else changed == 0), (changed, len(a))
    # QAT implies centered anchors: the decode ends in one more addition (the image's centre), its output at 16 bits
    assert info["centered_anchors"] is True and "centered_anchors" not in ptq["artifact_info"]
    plain, centered = _output_bits(imx, ptq), _output_bits(imx, qat)
    adds = [sorted((int(k[4:]) for k in bits if re.fullmatch(r"add_\d+", k)))[-1] for bits in (plain, centered)]
    assert adds[1] == adds[0] + 1 and centered[f"add_{adds[1]}"] == 16 and centered["mul_2"] == 16, adds


def _output_bits(imx: dict, rec: dict) -> dict[str, int]:
    """Each layer's output bits in a variant's MCT-quantized ONNX (its activation quantizers), by layer name."""
    import onnx

    from yoloq.artifacts import cached_artifact

    art = cached_artifact(imx["tmp"] / "bundle" / "work" / "artifacts" / rec["name"], rec["key"])
    model = onnx.load(str(next(Path(art.path).glob("*.onnx"))))
    return {n.name.split("/")[2].removesuffix("_activation_holder_quantizer"): onnx.helper.get_attribute_value(a)
            for n in model.graph.node if n.op_type == "ActivationPOTQuantizer" for a in n.attribute
            if a.name == "num_bits"}


def _kept(ref, other) -> int:  # noqa: ANN001 - Detections
    """How many of ``ref``'s detections ``other`` has too: the same class at IoU >= 0.5."""
    if not len(ref) or not len(other):
        return 0
    lt = np.maximum(ref.boxes[:, None, :2], other.boxes[None, :, :2])
    rb = np.minimum(ref.boxes[:, None, 2:], other.boxes[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_r, area_o = (ref.boxes[:, 2:] - ref.boxes[:, :2]).prod(1), (other.boxes[:, 2:] - other.boxes[:, :2]).prod(1)
    iou = inter / (area_r[:, None] + area_o[None] - inter)
    return int(((iou >= 0.5) & (ref.classes[:, None] == other.classes[None])).any(1).sum())


@pytest.mark.full  # Sony's toolkit takes 4-6 min even at 320: full tier (and CI's own IMX500 step)
def test_explain_gives_each_layers_bits_on_the_imx500(imx):
    """``yoloq explain``: every convolution of MCT's model with the bits the IMX500 runs it at and its MACs (YOLO11n
    at 320: ~0.8 GMACs), no times (the network runs on the sensor), and what it takes of the sensor's 8 MB."""
    import re

    from yoloq.explain import explain

    text = explain(imx["tmp"] / "bundle" / "work", "imx500-int8", runs=1)
    share, gmacs = map(float, re.search(r"int8 share: ([\d.]+)% of ([\d.]+) GMACs", text).groups())
    assert share > 90 and 0.7 < gmacs < 0.9, text[:2000]
    used, chip = map(float, re.search(r"On the sensor: ([\d.]+)MB of its ([\d.]+)MB .*: fits\)", text).groups())
    assert 0 < used < chip == 8.0, text[:2000]


@pytest.mark.full  # Sony's toolkit takes 4-6 min even at 320: full tier (and CI's own IMX500 step)
def test_an_imx500_bundle_runs_the_simulated_model(imx):
    """``yoloq export``: the camera's packerOut.zip and labels, and a predict.py whose simulated model (ONNX Runtime
    with MCT's and Sony's ops, no yoloq or Ultralytics) gives yoloq's detections."""
    from test_bundle import RUNTIMES, _check_bundle

    out = imx["tmp"] / "bundle"
    proc = run_cli("export", str(imx["cfg"]), "--variant", "imx500-int8", "--out", str(out), timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "quantize imx500-int8" not in proc.stderr  # the run's export, reused
    assert {"packerOut.zip", "labels.txt"} <= {p.name for p in out.rglob("*")}
    assert "imx500-package" in (out / "README.md").read_text()
    assert (out / "requirements.txt").read_text().split()[0] == "onnxruntime" and "imx500" in RUNTIMES
    assert _check_bundle(out, "imx500-int8", 320, "end2end") > 0


@pytest.mark.full  # Sony's export is minutes even small: YOLO11n's IMX500 tests cover the backend
def test_yolov8n_goes_through_sonys_export_and_the_simulation(sony_tools, tmp_path):
    """YOLOv8n (random init, the other family MCT's IMX settings cover): exported for the IMX500 at imgsz 160 (2
    calibration images, the mixed-precision search on 1), scored by simulation with the standard ops checked bit
    for bit."""
    from families import build
    from ultralytics import YOLO

    pt = build("yolov8n", tmp_path, YOLO(str(SHARED / "models" / "yolo11n.pt")).names)
    cfg = yaml.safe_load(_config(tmp_path, str(pt), tmp_path / "o", [
        {"format": "imx500", "precision": "int8", "options": {"mixed_precision_images": 1, "nms_conf": 0.5}}]
    ).read_text())  # nms_conf: an untrained model's scores are spread over (0, 1), and Sony's NMS is slow on many
    cfg |= {"imgsz": 160, "data": cfg["data"] | {"max_images": 2}, "calibration": cfg["calibration"] | {"images": 2},
            "eval": {"conf": 0.5, "iou": 0.7, "max_det": 300, "multi_label": False}}
    (tmp_path / "v8.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", str(tmp_path / "v8.yaml"), "--out", str(tmp_path / "o"), timeout=3600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "o" / "records.jsonl").read_text().splitlines()[0])
    assert rec["status"] == "ok", rec["reason"]
    info = rec["artifact_info"]
    assert info["simulation"]["identical"] and info["head"]["nms_in_model"] and info["calibration_used"] == 2
    assert "standard ONNX ops" in rec["runtime"]["precision_ran"] and rec["metrics"]["images"] == 2


def test_a_family_mcts_imx_export_does_not_take_is_a_skipped_record(tmp_path):
    """YOLO26n (random init): skipped, naming what Sony's IMX500 export takes; nothing is exported."""
    from families import build
    from ultralytics import YOLO

    pt = build("yolo26n", tmp_path, YOLO(str(SHARED / "models" / "yolo11n.pt")).names)
    cfg = _config(tmp_path, str(pt), tmp_path / "o", [{"format": "imx500", "precision": "int8"}])
    proc = run_cli("run", str(cfg), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    rec = json.loads((tmp_path / "o" / "records.jsonl").read_text().splitlines()[0])
    assert rec["status"] == "skipped" and "YOLOv8n and YOLO11n" in rec["reason"]


def test_an_nms_threshold_above_the_evaluations_is_refused():
    """The NMS inside the IMX500 model at a score above eval.conf would drop boxes the evaluator keeps (a lower mAP,
    silently): the config is refused in one line naming both."""
    from yoloq.backends.registry import resolve_config
    from yoloq.config import parse_config
    from yoloq.errors import ConfigError

    base = {"model": "m.pt", "data": "coco-mini"}
    with pytest.raises(ConfigError, match=r"options.nms_conf': got 0.25, expected at most eval.conf \(0.001\)"):
        resolve_config(parse_config(base | {"variants": [{"format": "imx500", "precision": "int8",
                                                          "options": {"nms_conf": 0.25}}]}))
    ok = resolve_config(parse_config(base | {"eval": {"conf": 0.25}, "variants": [
        {"format": "imx500", "precision": "int8", "options": {"nms_conf": 0.25}}]}))
    assert ok.variants[0].options["nms_conf"] == 0.25


def test_an_export_is_kept_by_its_key_so_tune_and_run_share_it(tmp_path, monkeypatch):
    """An IMX500 export (20-30 min at 640) is kept under $YOLOQ_CACHE by its key, whole or not at all; a later run
    with the same key gets a copy and its reply, an unknown key nothing."""
    from yoloq.backends.imx500.store import cached, keep

    monkeypatch.setenv("YOLOQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run1" / "imx500"
    out.mkdir(parents=True)
    (out / "packerOut.zip").write_bytes(b"camera package")
    (out / "model_imx.onnx").write_bytes(b"onnx")
    key = "ab" * 32
    keep(key, out, {"ok": True, "seconds": 1500.0, "calibration_used": 200})
    assert not list((tmp_path / "cache" / "imx500-exports").glob("*.partial"))
    again = tmp_path / "run2" / "imx500"
    reply = cached(key, again)
    assert reply == {"ok": True, "seconds": 1500.0, "calibration_used": 200, "reused_from_cache": True}
    assert (again / "packerOut.zip").read_bytes() == b"camera package"
    assert cached("cd" * 32, tmp_path / "run3" / "imx500") is None


def test_the_sensors_memory_report_is_read():
    """imxconv-pt's memory report becomes the record's sensor_memory: usage, the chip's memory, whether it fits."""
    import tempfile

    from yoloq.backends.imx500.backend import sensor_memory

    with tempfile.TemporaryDirectory() as tmp:
        assert sensor_memory(Path(tmp)) == {}
        (Path(tmp) / "model_imx_MemoryReport.json").write_text(json.dumps({"Memory Report": {
            "Memory Usage": "9.10MB", "Total Memory Available On Chip": "8.00MB", "Fit In Chip": False,
            "Runtime Memory Physical Size": "6.40MB", "Model Memory Physical Size": "2.70MB"}}))
        assert sensor_memory(Path(tmp)) == {"usage": "9.10MB", "available": "8.00MB", "runtime": "6.40MB",
                                            "model": "2.70MB", "fits": False}


def test_the_tune_space_and_mcts_options_are_checked():
    """yoloq tune's IMX500 candidates are valid options of the backend (their patterns compile with the Detect
    module's prefix in place); an unknown threshold rule is refused in one line naming the allowed ones."""
    import re

    from yoloq.backends.registry import get_backend, resolve_config
    from yoloq.config import parse_config
    from yoloq.errors import ConfigError

    backend = get_backend("imx500")
    space = backend.tune_space({})
    assert [c.name for c in space][0] == "default" and len(space) >= 2
    for cand in space:
        assert set(cand.options) <= set(backend.options)
        for pattern in cand.options.get("activations_16bit", []):
            re.compile(pattern.replace("{head}", "model_23"))
    base = {"model": "m.pt", "data": "coco-mini"}
    with pytest.raises(ConfigError, match=r"activation_error_method.*noclipping"):
        resolve_config(parse_config(base | {"variants": [{"format": "imx500", "precision": "int8",
                                                          "options": {"activation_error_method": "bogus"}}]}))


def test_centered_anchors_fit_the_sensors_8_bit_constants_where_ultralytics_do_not():
    """At 640 no 8-bit power-of-two threshold (one per anchor, as MCT quantizes the decode's anchor grid) holds 2,304
    of Ultralytics' 6,400 stride-8 anchors (MCT's export rounds them by half a cell); counted
    from the image's centre (``centered_anchors``) every anchor is exact, and the decode adds the centre back in
    pixels: the same boxes."""
    import torch
    from ultralytics.utils.tal import make_anchors

    from yoloq.backends.imx500.worker import image_centre

    def off(a: torch.Tensor) -> torch.Tensor:  # anchors no 8-bit power-of-two threshold holds exactly (MCT picks
        exact = torch.zeros(len(a), dtype=torch.bool)  # the least-error threshold: an exact one where there is one)
        for k in range(-7, 12):
            step = 2.0 ** k / 128
            exact |= ((a / step).round().clamp(-128, 127) * step == a).all(1)
        return ~exact

    strides = torch.tensor([8.0, 16.0, 32.0])
    feats = torch.cat([s / strides.unsqueeze(-1) for s in (640, 640)], dim=1)
    anchors, stride = make_anchors(feats, strides, 0.5)
    shift, centre = image_centre(feats, strides)
    centered = anchors - shift
    assert int(off(anchors).sum()) == int(off(anchors[:6400]).sum()) == 2304
    assert not off(centered).any() and float(centered.abs().max()) == 39.5
    assert torch.equal(centered * stride + centre.T, anchors * stride)  # the decode adds the centre back: same boxes


def test_layers_mct_refuses_at_16_bits_are_dropped_one_by_one():
    """The export worker asks MCT for 16-bit outputs on the layers a pattern matches; a layer MCT refuses for the
    IMX500 (its consumer takes 8-bit inputs only) is dropped and named, and the export tried again; any other error,
    or a refusal of every layer, ends the export."""
    from yoloq.backends.imx500.worker import SixteenBit

    sixteen = SixteenBit([])
    sixteen.chosen = ["cat_3", "model_23_cv3_0_2", "cat_18"]
    refusal = "Manually selected activation bit-width 16 is invalid for node cat:{}."
    assert sixteen.retry(Exception(refusal.format("cat_3")))
    assert sixteen.chosen == ["model_23_cv3_0_2", "cat_18"] and sixteen.refused == ["cat_3"]
    assert not sixteen.retry(Exception("imxconv-pt returned non-zero exit status 1"))
    assert not sixteen.retry(Exception(refusal.format("cat_9")))  # not one of ours: not retried
    sixteen.retry(Exception(refusal.format("cat_18")))
    with pytest.raises(ValueError, match="MCT takes none of"):
        sixteen.retry(Exception(refusal.format("model_23_cv3_0_2")))


def test_an_export_that_cannot_fit_this_machine_is_announced(capsys):
    """MCT's memory grows with the calibration images (measured: 1.7 GB on 8 and 4.9 GB on 48 at 320, 6.3 GB on 64
    and 21 GB on 200 at 640): the estimate follows those within a third, and an export it puts over the machine's
    free memory is announced before it starts, naming the option that shrinks it."""
    from yoloq.backends.imx500.process import mct_memory_gb, warn_memory

    for images, imgsz, measured in ((8, 320, 1.7), (48, 320, 4.9), (64, 640, 6.3), (200, 640, 21.0)):
        assert abs(mct_memory_gb(images, imgsz) - measured) <= measured / 3, (images, imgsz)
    warn_memory(np.zeros((64, 3, 8, 8), np.uint8))  # 64 tiny images: a few GB, no warning
    assert "warning" not in capsys.readouterr().err
    warn_memory(np.zeros((5000, 3, 8, 8), np.uint8))  # as many as no machine here holds
    err = capsys.readouterr().err
    assert "warning: Sony's MCT will hold about" in err and "options.calibration_images: 64" in err


def _coco_mini(n: int, split: str, imgsz: int = 320) -> list[np.ndarray]:
    from yoloq.preprocess import prepare, read_image

    files = sorted((SHARED / "datasets" / "coco-mini" / split).glob("*.jpg"))[:n]
    return [prepare([read_image(f)], imgsz)[0] for f in files]


def test_mcts_power_of_two_threshold_trades_clipping_against_the_step():
    """The threshold of a signed 8-bit activation: a power of two; the one that clips nothing where the values
    spread to their largest, a lower one (clipping a rare outlier for a finer step) where one value stands alone."""
    from yoloq.backends.imx500.distill import pow2_threshold

    rng = np.random.default_rng(0)
    spread = rng.uniform(-5.0, 5.0, 10000)
    assert pow2_threshold(spread) == 8.0  # 5 fits under 8 and nothing clips
    outlier = np.append(rng.normal(0, 0.5, 100000), 9.0)
    assert pow2_threshold(outlier) == 4.0  # 16 would clip nothing: its step costs more than clipping one value
    assert pow2_threshold(np.array([0.3, -0.2])) == 0.5


def test_a_checkpoint_of_learned_fused_weights_computes_them(tmp_path):
    """What distillation learns (fused convolution weights and biases) goes back into an Ultralytics checkpoint of
    the same structure: loaded and fused again, it computes what the learned fused model computes."""
    from types import SimpleNamespace

    import torch

    from yoloq.backends.imx500.distill import student_layers, write_checkpoint
    from yoloq.backends.torch_scope import export_module
    from yoloq.models import load_source

    source = load_source("yolo11n.pt")
    fused = export_module(source, 320, False, 300, "ncnn")
    modules = dict(fused.named_modules())
    gen = torch.Generator().manual_seed(0)
    learned = {}
    for name in student_layers(fused):
        m = modules[name]
        m.weight.data += 0.01 * m.weight.abs().max() * torch.randn(m.weight.shape, generator=gen)
        m.bias.data += 0.01 * torch.randn(m.bias.shape, generator=gen)
        learned[name] = (m.weight.detach().numpy(), m.bias.detach().numpy(), 1.0)
    ckpt = write_checkpoint(source.path, learned, tmp_path / "yolo11n.pt")
    again = export_module(SimpleNamespace(path=ckpt), 320, False, 300, "ncnn")
    x = torch.from_numpy(_coco_mini(1, "val2017")[0])
    with torch.no_grad():
        want, got, original = fused(x), again(x), export_module(source, 320, False, 300, "ncnn")(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-3), float((got - want).abs().max())
    assert not torch.allclose(original, want, rtol=1e-4, atol=1e-3)  # the perturbation is there to be carried


@pytest.mark.full  # about a minute at 320 (60 steps of distillation); CI runs the full tier
def test_sensor_distillation_learns_the_power_of_two_arithmetic_and_its_checkpoint_carries_it(tmp_path):
    """``distill_steps`` (no Sony tool needed): every convolution input gets a power-of-two 8-bit threshold chosen as
    MCT's mse method chooses it (the image's: 1); the FP32 model distilled through that arithmetic is written as an
    Ultralytics checkpoint whose fused model, under the same fake quantizers, is closer to the FP32 teacher on images
    it never saw (val) than the original is: so the checkpoint MCT is given carries what was learned."""
    import copy
    from types import SimpleNamespace

    import torch

    from yoloq.backends.imx500.distill import distill_for_sensor, sensor_grids
    from yoloq.backends.torch_scope import export_module
    from yoloq.models import load_source
    from yoloq.recover.distill import _fake_quantize

    source = load_source("yolo11n.pt")
    cal, held = _coco_mini(16, "train2017"), _coco_mini(6, "val2017")
    teacher = export_module(source, 320, False, 300, "ncnn")
    grids = sensor_grids(teacher, cal)
    assert grids["model.0.conv"].input_scale == 128.0  # the image's [0, 1]: threshold 1
    assert all(np.log2(128.0 / g.input_scale) == round(np.log2(128.0 / g.input_scale)) for g in grids.values())
    assert not any(".dfl." in n for n in grids) and len(grids) > 80
    ckpt, result = distill_for_sensor(source, cal, 320, 60, 2, tmp_path / "distilled" / "yolo11n.pt")
    assert result["kept"] and result["steps"] == 60 and result["layers"] == len(grids), result
    distilled = export_module(SimpleNamespace(path=ckpt), 320, False, 300, "ncnn")

    def sqnr(model) -> float:
        student = copy.deepcopy(model)
        modules = dict(student.named_modules())
        for name, grid in grids.items():
            _fake_quantize(modules[name], grid)
        with torch.no_grad():
            ref = torch.cat([teacher(torch.from_numpy(x)) for x in held]).numpy().astype(np.float64)
            y = torch.cat([student(torch.from_numpy(x)) for x in held]).numpy().astype(np.float64)
        ref[:, :4] /= 320
        y[:, :4] /= 320
        return float(10 * np.log10((ref ** 2).sum() / ((ref - y) ** 2).sum()))

    before, after = sqnr(teacher), sqnr(distilled)
    assert after > before + 0.5, (before, after, result)
