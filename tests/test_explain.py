"""``yoloq explain`` on the smoke run: the executed graphs of the real INT8 exports, shares, reasons, times."""

from __future__ import annotations

import re

import pytest
from conftest import run_cli

from yoloq.explain import explain, summarise
from yoloq.records import RecordStore

pytestmark = pytest.mark.shared


@pytest.mark.parametrize("name", ["onnxruntime-int8", "openvino-int8", "litert-int8"])
def test_explain_shows_int8_share_float_layers_and_reasons(smoke_run, name):
    run_dir = smoke_run["dir"]
    text = explain(run_dir, name, runs=2)
    macs = float(re.search(r"int8 share: ([\d.]+)% of ([\d.]+) GMACs", text).group(1))
    assert macs > 80  # YOLO11n's convolutions run in int8 on every backend
    assert "kept in float by the variant's scope" in text  # the head's output convs, by keep_head_float
    assert (run_dir / f"explain-{name}.md").read_text() == text
    if name != "litert-int8":  # ORT and OpenVINO profile each node; LiteRT's Python API cannot
        assert re.search(r"int8 share: .* GMACs, ([\d.]+)% of ([\d.]+) ms", text)
        assert f"Biggest time differences against {name.replace('int8', 'fp32')}" in text


def test_summary_groups_every_non_int8_layer(smoke_run):
    from yoloq.explain import _input, _kept, _layers

    rec = RecordStore(smoke_run["dir"]).get("onnxruntime-int8")
    batch, threads = _input(smoke_run["dir"])
    layers = _layers(smoke_run["dir"], rec, batch, threads, 1)
    s = summarise(layers, _kept(rec))
    assert sum(g["layers"] for g in s["float_groups"].values()) == sum(1 for x in layers if x.precision != "int8")
    assert 0 < s["int8_macs_share"] <= 1 and s["by_precision"]["int8"]["macs"] > 0


def test_explain_unknown_variant_is_one_line(smoke_run):
    proc = run_cli("explain", str(smoke_run["dir"]), "nope")
    assert proc.returncode == 2 and "no variant 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_explain_without_the_runs_config_is_one_line(smoke_run, tmp_path):
    (tmp_path / "records.jsonl").write_text((smoke_run["dir"] / "records.jsonl").read_text())
    proc = run_cli("explain", str(tmp_path), "onnxruntime-int8")
    assert proc.returncode == 2 and "config.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_executorch_explain_times_xnnpack_ops_and_the_kernels_between(executorch_run):
    """ExecuTorch's event tracer: XNNPACK's int8 convolutions, the Converts around its float ops (SiLU's Sigmoid and
    Multiply by default; with int8_silu the sigmoid as XNNPACK's int8 table), the portable kernels between delegate
    calls; times, no MACs."""
    from yoloq.backends.executorch_profile import precisions
    from yoloq.explain import _input, _layers

    text = explain(executorch_run["dir"], "executorch-int8", runs=2)
    share = re.search(r"int8 share \(this runtime's profiler gives no shapes: no MACs\), ([\d.]+)% of ([\d.]+) ms",
                      text)
    assert share and 10 < float(share.group(1)) < 100 and float(share.group(2)) > 0, text[:600]
    assert "| int8 |" in text and "| convert |" in text and "native_call_" in text  # a portable kernel
    assert "Sigmoid (NC)" in text  # float SiLU in XNNPACK
    store = RecordStore(executorch_run["dir"])
    fast = _layers(executorch_run["dir"], store.get("executorch-int8-fast"), *_input(executorch_run["dir"]), 1)
    tables = [r for r in fast if r.op.startswith("LookupTable (NC, X8)")]
    float_sigmoids = [r for r in fast if r.op.startswith("Sigmoid") and r.precision == "fp32"]
    assert len(tables) > 50 and {r.precision for r in tables} == {"int8"}, len(tables)  # every SiLU's sigmoid
    assert len(float_sigmoids) <= 3, float_sigmoids  # the head's class scores (its decode stays float)
    # the exact rewrites leave XNNPACK the DFL's softmax and the upsamples; the blocks' splits too in FP32 (20 portable
    # splits as Ultralytics exports it; the two left are the attention's q/k/v split), in INT8 only with split_convs
    # (each half's own int8 scale cost accuracy); with int8_silu the SiLUs as x * sigmoid(x)
    rewrites = {"dfl_last_axis": 1, "nearest_as_concat": 2, "split_first_conv": 9}
    assert store.get("executorch-fp32").artifact_info["rewrites"] == rewrites  # stored beside the FP32 program
    assert store.get("executorch-int8").artifact_info["rewrites"] == {"dfl_last_axis": 1, "nearest_as_concat": 2}
    assert store.get("executorch-int8-fast").artifact_info["rewrites"] == rewrites | {"silu_as_product": 86}
    assert store.get("executorch-int8").artifact_info["int8_silu"] is False
    portable = dict(re.findall(r"\((\w+)\.out\) \| (\d+) \|", text))
    assert "native_call_upsample_nearest2d" not in text and "native_call__softmax" not in text, portable
    assert int(portable.get("split_with_sizes_copy", 0)) <= 20, portable  # the blocks' splits, as Ultralytics'
    assert sum(r.op.startswith("split_with_sizes_copy") for r in fast) <= 2  # split_convs: the attention's only
    assert "Biggest time differences against executorch-fp32" in text and "| Convolution |" in text
    rec = RecordStore(executorch_run["dir"]).get("executorch-int8")
    assert rec.explain["int8_macs_share"] is None and rec.explain["int8_time_share"] > 0.1
    # a type flows along XNNPACK's order: an untyped op computes in what the last Convert made
    assert precisions(["Convolution (NHWC, QC8) IGEMM #1", "Convert (NC) #1", "Sigmoid (NC) #1", "Convert (NC) #2",
                       "Add (ND) #1", "Fully Connected (NC, F32) GEMM #1", "Add (ND) #2", "Invalid Unary Op #1"]) == \
        ["int8", "convert", "fp32", "convert", "int8", "fp32", "fp32", "int8"]
