"""Config validation: every mistake is one ConfigError naming the key, the value and what is allowed."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from yoloq.backends.registry import resolve_config
from yoloq.config import load_config, parse_config
from yoloq.errors import ConfigError
from yoloq.paths import REPO_ROOT

BASE = {"model": "yolo11n.pt", "data": {"dataset": "coco-mini"}, "variants": [{"format": "torch"}]}


def resolved(data):
    return resolve_config(parse_config(data))


def with_(**changes):
    d = yaml.safe_load(yaml.safe_dump(BASE))
    d.update(changes)
    return d


@pytest.mark.parametrize("name", ["default", "coco128", "smoke", "onnx-source", "gpu"])
def test_shipped_configs_load(name):
    cfg = resolve_config(load_config(REPO_ROOT / "configs" / f"{name}.yaml"))
    assert cfg.variants and cfg.imgsz % 32 == 0


def test_defaults_match_ultralytics_val():
    cfg = parse_config(BASE)
    assert (cfg.eval.conf, cfg.eval.iou, cfg.eval.max_det, cfg.eval.multi_label) == (0.001, 0.7, 300, True)
    assert (cfg.latency.warmup, cfg.latency.min_runs, cfg.latency.min_seconds, cfg.latency.batch) == (10, 100, 10, 1)
    assert cfg.reference_label == "torch-fp32"


def test_default_config_is_the_issue_matrix():
    cfg = load_config(REPO_ROOT / "configs" / "default.yaml")
    assert [v.label for v in cfg.variants] == [
        "torch-fp32", "onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8", "openvino-fp32", "openvino-fp16",
        "openvino-int8", "litert-fp32", "litert-fp16", "litert-int8"]
    assert cfg.imgsz == 640 and cfg.data.split == "val2017"
    assert all(s.split == "train2017" for s in cfg.calibration.sources)


@pytest.mark.parametrize("data, message", [
    (with_(imgsz2=640), "unknown config key 'imgsz2'; did you mean 'imgsz'?"),
    (with_(eval={"iuo": 0.5}), "unknown config key 'eval.iuo'; did you mean 'iou'?"),
    (with_(imgsz="big"), "config key 'imgsz': got 'big', expected an integer"),
    (with_(imgsz=100), "config key 'imgsz': got 100, expected a multiple of 32"),
    (with_(eval={"conf": 1.5}), "config key 'eval.conf': got 1.5, expected 0 <= conf < 1"),
    (with_(latency={"min_runs": 0}), "config key 'latency.min_runs': got 0, expected >= 1"),
    (with_(variants=[{"format": "tflite"}]),
     "unknown format 'tflite'; valid formats: executorch, imx500, litert, ncnn, onnxruntime"),
    (with_(variants=[{"format": "openvino", "precision": "int4"}]), "got 'int4', expected one of fp32, fp16, int8"),
    (with_(variants=[{"format": "tensorrt", "precision": "fp32", "device": "cuda"}]),
     "'fp32' is not a tensorrt precision"),
    (with_(variants=[{"format": "onnxruntime", "precision": "fp32", "options": {"accuracy_control": True}}]),
     "options.accuracy_control': applies to onnxruntime int8 variants, not fp32"),
    (with_(qat={"formats": ["litert"]}), "config key 'qat.formats[0]': litert cannot run a Q/DQ INT8 ONNX"),
    (with_(variants=[{"format": "onnxruntime", "precision": "int8", "options": {"calibration_images": 0}}]),
     "options.calibration_images': got 0, expected >= 1"),
    (with_(variants=[{"format": "onnxruntime", "options": {"per_chanel": False}}]),
     "unknown config key 'variants[0].options.per_chanel'; did you mean 'per_channel'?"),
    (with_(variants=[{"format": "onnxruntime", "precision": "int8", "options": {"per_channel": "yes"}}]),
     "options.per_channel': got 'yes', expected bool"),
    (with_(variants=[{"format": "torch"}, {"format": "torch"}]), "unique variant names"),
    (with_(variants=[]), "config key 'variants': got (), expected at least one variant"),
    (with_(reference="nope"), "config key 'reference': got 'nope'"),
    ({"data": {"dataset": "coco-mini"}, "variants": [{"format": "torch"}]}, "missing required key 'model'"),
    ([1, 2], "config must be a mapping"),
])
def test_config_errors(data, message):
    with pytest.raises(ConfigError) as err:
        resolved(data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_broken_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)


def test_config_is_frozen_and_hash_ignores_output():
    a = parse_config(with_(output="a"))
    b = parse_config(with_(output="b"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.imgsz = 320  # type: ignore[misc]
    assert a.hash() == b.hash()
    assert a.hash() != parse_config(with_(imgsz=320)).hash()
    assert dict(a.variants[0].options) == {}
    raw = parse_config(with_(variants=[{"format": "onnxruntime", "precision": "int8"}]))
    ort = resolve_config(raw).variants[0]
    assert dict(raw.variants[0].options) == {} and not raw.variants[0].resolved  # resolving makes a new variant
    assert ort.resolved and ort.options["per_channel"] is True and ort.options["quant_format"] == "qoperator"
    fp32 = resolve_config(parse_config(with_(variants=[{"format": "onnxruntime"}]))).variants[0]
    assert dict(fp32.options) == {}  # an FP32 variant carries no INT8 settings
