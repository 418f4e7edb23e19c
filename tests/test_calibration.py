"""Calibration speed-ups give the ranges the libraries' own calibration gives, value for value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from yoloq.paths import shared_root


def _model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(4, 8, 3, 3)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig"),
         helper.make_node("Mul", ["c1", "s1"], ["a1"], name="silu"),
         helper.make_node("Conv", ["a1", "w2"], ["out"], name="conv2", pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 48, 48])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 48, 48])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.shared
@pytest.mark.parametrize(("method", "options"), [("percentile", {}), ("entropy", {}), ("minmax", {}),
                                                 ("percentile", {"symmetric_ranges": False, "percentile": 99.99})])
def test_ort_ranges_equal_quantize_statics_own(tmp_path: Path, method: str, options: dict):
    """yoloq calibrates with ONNX Runtime's calibrator and its histogram code (tensors binned on threads);
    the cached ranges equal those of ``quantize_static`` calibrating by itself, stride by stride, with
    yoloq's ``percentile`` and ``symmetric_ranges`` as ``quantize_static``'s own extra options."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    from yoloq.backends.onnxruntime.quantize import calibration_reader, collect_ranges, prepare_model
    from yoloq.data.calibration import CalibrationSet

    images = tuple(sorted((shared_root() / "datasets" / "coco-mini" / "train2017").glob("*.jpg"))[:18])
    cal = CalibrationSet(images=images, sources=("test",), seed=0, requested=18, sha256="", pool=18,
                         hashes=tuple(str(i) for i in range(18)))  # two strides of 9: histograms grow
    prep = tmp_path / "prep.onnx"
    name = prepare_model(_model(tmp_path / "m.onnx"), prep)
    theirs, ours = tmp_path / "theirs.json", tmp_path / "ours.json"
    quantize_static(str(prep), str(tmp_path / "q.onnx"), calibration_reader(cal, 48, name),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, {"percentile": "Percentile", "entropy": "Entropy",
                                                                 "minmax": "MinMax"}[method]),
                    extra_options={"CalibStridedMinMax": 9, **({"CalibPercentile": options["percentile"]}
                                                               if "percentile" in options else {}),
                                   **({"CalibTensorRangeSymmetric": options["symmetric_ranges"]}
                                      if "symmetric_ranges" in options else {})},
                    calibration_cache_path=str(theirs))
    ranges = calibration_reader(cal, 48, name)
    assert collect_ranges(prep, ranges, {"calibrate_method": method, **options}, ours) == {}
    a, b = load_tensors_data(theirs).data, load_tensors_data(ours).data
    assert set(a) == set(b) and len(a) >= 4
    for t in a:
        assert np.array_equal(a[t].range_value, b[t].range_value), t
    if options:  # and the options changed the ranges
        default = tmp_path / "default.json"
        collect_ranges(prep, calibration_reader(cal, 48, name), {"calibrate_method": method}, default)
        c = load_tensors_data(default).data
        assert any(not np.array_equal(b[t].range_value, c[t].range_value) for t in b)


def test_ort_percentile_options_are_validated():
    """A percentile outside (50, 100] or a symmetric_ranges that is not a bool is one config error."""
    from yoloq.backends.registry import backend_class, resolve_options
    from yoloq.errors import ConfigError

    cls = backend_class("onnxruntime")
    assert resolve_options(cls, "int8", {"percentile": 99.99}, "v")["percentile"] == 99.99
    for bad in ({"percentile": 100.5}, {"percentile": 10}, {"symmetric_ranges": "no"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            resolve_options(cls, "int8", bad, "v")


def test_bin_counts_equal_numpys_histogram():
    """The linear-time binning of ONNX Runtime's later calibration strides counts what ``np.histogram`` counts
    with the same edges: grown as ONNX Runtime grows them (first ``num_bins`` edges, then more of the same
    width), values on and one float below edges, beyond them, NaN and inf, of |x| and of x."""
    from yoloq.backends.onnxruntime.quantize import bin_counts

    rng = np.random.default_rng(0)
    grown = 0
    for _ in range(200):
        first = np.abs(rng.normal(size=int(rng.integers(2, 3000))).astype(np.float32)) * rng.uniform(0.01, 50)
        _, edges = np.histogram(first, bins=int(rng.integers(1, 2049)))
        edges = edges.astype(np.float32)
        x = rng.normal(size=int(rng.integers(0, 20000))).astype(np.float32) * np.float32(rng.uniform(0.01, 80))
        on = edges[rng.integers(0, len(edges), 100)]
        x = np.concatenate([x, on, -np.nextafter(on, np.float32(0)), np.float32([np.nan, np.inf, -np.inf])])
        top = np.max(np.abs(x[np.isfinite(x)]))
        if top > edges[-1]:  # as ONNX Runtime's HistogramCollector grows its edges
            width = edges[1] - edges[0]
            edges = np.hstack((edges, np.arange(edges[-1] + width, top + width, width)))
            grown += 1
        block = 1 << int(rng.integers(4, 12))
        assert np.array_equal(bin_counts(x, edges, absolute=True, block=block), np.histogram(np.abs(x), bins=edges)[0])
        assert np.array_equal(bin_counts(x, edges, block=block), np.histogram(x, bins=edges)[0])
    assert grown > 50
    flat = np.float32([0.5, 0.5, 0.5])  # edges without width (a constant tensor): numpy's answer, not a crash
    ours = bin_counts(np.float32([0.5, 0.5, -0.5]), flat, absolute=True)
    assert np.array_equal(ours, np.histogram([0.5] * 3, flat)[0])


@pytest.mark.shared
@pytest.mark.full  # an optimization (one calibration for several scopes), checked byte for byte: about 1 min
def test_variants_that_differ_only_in_scope_share_one_calibration(tmp_path: Path):
    """Two ONNX Runtime INT8 variants with the same images and range method calibrate once; the second's INT8
    file is byte for byte the one it gets calibrating alone."""
    import hashlib
    import json

    import yaml
    from conftest import run_cli

    def config(variants: list[dict], name: str) -> Path:
        cfg = yaml.safe_load(Path("configs/smoke.yaml").read_text())
        cfg["variants"] = [{"format": "torch", "precision": "fp32"}, *variants]
        cfg["data"]["max_images"] = 2
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(cfg))
        return p

    stem0 = {"format": "onnxruntime", "precision": "int8", "name": "ort-stem0", "options": {"keep_stem_float": 0}}
    both = config([{"format": "onnxruntime", "precision": "int8"}, stem0], "both")
    alone = config([stem0], "alone")
    for cfg, out in ((both, "both"), (alone, "alone")):
        proc = run_cli("run", str(cfg), "--out", str(tmp_path / out), timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "both" / "artifacts" / "_ranges").glob("*.bad.json"))) == 1  # one calibration

    def digest(run: str) -> str:  # the model's bytes but for the FP32 export's date stamp (each run exports anew)
        m = onnx.load(str(tmp_path / run / "artifacts" / "ort-stem0" / "model_int8.onnx"))
        keep = [p for p in m.metadata_props if p.key != "date"]
        del m.metadata_props[:]
        m.metadata_props.extend(keep)
        return hashlib.sha256(m.SerializeToString()).hexdigest()

    assert digest("both") == digest("alone")
    lines = (tmp_path / "both" / "records.jsonl").read_text().splitlines()
    recs = {json.loads(x)["name"]: json.loads(x) for x in lines}
    assert recs["ort-stem0"]["status"] == "ok" and recs["onnxruntime-int8"]["status"] == "ok"


@pytest.mark.shared
def test_ort_calibrates_only_the_tensors_its_int8_nodes_read(tmp_path: Path):
    """A variant with layers in float calibrates only the tensors its int8 nodes read (the shared YOLO11n, its
    stem and head in float: fewer tensors), and its INT8 model is the one calibrating every tensor gives, byte
    for byte; a second variant of the run with fewer layers in float calibrates only the tensors missing from
    the ranges kept for the run, and its model too is the full calibration's."""
    from yoloq.backends.onnxruntime.quantize import (
        calibrate,
        calibration_reader,
        collect_ranges,
        quantize_file,
    )
    from yoloq.backends.onnxruntime.tensors import quantized_tensors
    from yoloq.backends.registry import backend_class, resolve_options
    from yoloq.backends.scope import float_scope
    from yoloq.data.calibration import CalibrationSet

    fp32 = shared_root() / "models" / "yolo11n.onnx"
    images = tuple(sorted((shared_root() / "datasets" / "coco-mini" / "train2017").glob("*.jpg"))[:6])
    cal = CalibrationSet(images=images, sources=("test",), seed=0, requested=6, sha256="six", pool=6,
                         hashes=tuple(str(i) for i in range(6)))
    options = resolve_options(backend_class("onnxruntime"), "int8", {}, "v")
    share = tmp_path / "share"
    for scope, name in ((float_scope(fp32, options), "scoped"), ([], "all")):
        work = tmp_path / name
        work.mkdir()
        prep, cache, _ = calibrate(fp32, work, cal, 96, options, work / "narrow.onnx", scope, share=share)
        full = work / "full.json"
        collect_ranges(prep, calibration_reader(cal, 96, "images"), options, full)
        quantize_file(prep, work / "full.onnx", options, full, scope)
        assert (work / "narrow.onnx").read_bytes() == (work / "full.onnx").read_bytes()
        want = quantized_tensors(prep, scope)
        if scope:
            assert len(want) < len(quantized_tensors(prep))
        assert want <= set(json.loads(cache.read_text())["data"])
