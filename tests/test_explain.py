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
