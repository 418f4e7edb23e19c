"""The throughput pass: frames per second with several streams in flight, each runtime's own concurrency, kept in
the records and shown as a curve and as cameras served."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import SHARED

from yoloq.artifacts import variant_key
from yoloq.config import StreamsConfig, load_config, parse_config
from yoloq.errors import ConfigError
from yoloq.paths import REPO_ROOT
from yoloq.preprocess import read_image
from yoloq.throughput import cameras, measure_streams

SMOKE = REPO_ROOT / "configs" / "smoke.yaml"


@pytest.mark.shared
def test_every_timed_variant_has_its_curve(smoke_run):
    cfg = load_config(SMOKE)
    groups = set()
    for name, r in smoke_run["records"].items():
        t = r["throughput"]
        batched = r["format"] in ("torch", "onnxruntime", "openvino")  # the formats that take a batch
        assert [(lv["streams"], lv["batch"]) for lv in t["levels"]] == \
            [(n, 1) for n in cfg.streams.levels] + [(1, b) for b in cfg.streams.batches if batched], name
        if not batched:  # a fixed batch of 1, said so
            assert t["batches_refused"] == {"2": f"{r['format']} exports have a fixed batch of 1"}, name
        for lv in t["levels"]:
            assert lv["frames"] >= 1 and lv["seconds"] >= cfg.streams.seconds, (name, lv)
            assert lv["fps"] == pytest.approx(lv["frames"] / lv["seconds"], rel=0.01), (name, lv)
            assert 0 < lv["p50_ms"] <= lv["p90_ms"], (name, lv)
        assert t["settings"]["fps"] == 15 and t["threads"] == 2
        groups.add(t["group"])
        ran = t["concurrency"]["2"]
        if r["format"] == "openvino":  # OpenVINO's own throughput mode: one model, a request per stream
            assert "THROUGHPUT hint, 2 infer requests" in ran, ran
        else:  # separate sessions or interpreters with the two threads split between them
            assert ran == "2 separate runtimes x 1 thread", (name, ran)
    assert len(groups) == 1  # one side-by-side pass timed them all


@pytest.mark.shared
def test_the_report_says_how_many_cameras_each_variant_serves(smoke_run):
    d, records = smoke_run["dir"], smoke_run["records"]
    md = (d / "report.md").read_text()
    assert "## Throughput: streams in flight" in md and "![throughput](throughput.png)" in md
    for name, r in records.items():
        best = max(r["throughput"]["levels"], key=lambda lv: lv["fps"])
        n = int(best["fps"] // 15)
        how = f"batches of {best['batch']}" if best["batch"] > 1 else f"{best['streams']} stream"
        assert f"- {name}: {n} camera{'s' * (n != 1)} at 15 FPS ({best['fps']:.1f} FPS with {how}" in md
    rows = {row["variant"].replace(" (ref)", ""): row for row in csv.DictReader((d / "summary.csv").open())}
    for name, r in records.items():
        assert rows[name]["cameras"] == str(int(max(lv["fps"] for lv in r["throughput"]["levels"]) // 15))
    assert (d / "throughput.png").stat().st_size > 10_000


def test_cameras_is_the_best_stream_count_over_one_cameras_rate():
    levels = [{"streams": 1, "fps": 37.2, "p90_ms": 28.0}, {"streams": 2, "fps": 44.9, "p90_ms": 50.0},
              {"streams": 4, "fps": 44.0, "p90_ms": 95.0}]
    assert cameras(levels, 15) == {"cameras": 2, "streams": 2, "batch": 1, "fps": 44.9, "p90_ms": 50.0}
    assert cameras(levels, 45)["cameras"] == 0
    assert cameras([], 15) is None
    batched = levels + [{"streams": 1, "batch": 4, "fps": 61.0, "p90_ms": 70.0}]
    assert cameras(batched, 15) == {"cameras": 4, "streams": 1, "batch": 4, "fps": 61.0, "p90_ms": 70.0}
    assert cameras(batched, 15, batches=False)["cameras"] == 2  # the stream counts alone


@pytest.mark.parametrize("streams, message", [
    ({"levels": [2, 1]}, "streams.levels"), ({"levels": [0, 1]}, "streams.levels"),
    ({"fps": 0}, "streams.fps"), ({"batches": [1, 2]}, "streams.batches"), ({"batches": [4, 2]}, "streams.batches"),
    ({"levels": [2], "batches": [2]}, "streams.batches"), ({"block": 0}, "streams.block"), ({"seconds": -1}, "streams.seconds"),
])
def test_bad_streams_settings_are_refused(streams, message):
    base = {"model": "yolo11n.pt", "data": {"dataset": "coco-mini"}, "variants": [{"format": "torch"}]}
    with pytest.raises(ConfigError, match=message):
        parse_config(base | {"streams": streams})


def test_the_throughput_pass_changes_no_key_or_hash():
    """Measuring throughput (or not, or longer) never invalidates an export, an accuracy figure or a latency."""
    import dataclasses
    from pathlib import Path

    from yoloq.data.calibration import CalibrationSet
    from yoloq.models import SourceModel

    cfg = load_config(SMOKE)
    other = dataclasses.replace(cfg, streams=StreamsConfig(levels=(), seconds=10))
    assert cfg.hash() == other.hash()
    src = SourceModel(Path("yolo11n.pt"), "pt", ("person",), "0" * 64)
    cal = CalibrationSet((), ("coco-mini/train2017",), 0, 16, "1" * 64)
    assert variant_key(cfg, src, cal, cfg.variants[0]) == variant_key(other, src, cal, other.variants[0])


class _Failing:
    """A runtime that fails on its third frame, as a runtime that runs out of memory under load would."""

    info: dict = {}

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("out of memory at the third frame")
        return np.zeros((1, 84, 2100), np.float32)


@pytest.mark.shared
def test_a_stream_that_fails_names_its_error():
    """The failing stream's own error reaches the caller (not the other streams' released barrier)."""
    img = read_image(next((SHARED / "datasets/coco-mini/val2017").glob("*.jpg")))
    with pytest.raises(RuntimeError, match="third frame"):
        measure_streams({"v": ({2: [_Failing(), _Failing()]}, lambda raw, lbs: raw)}, [img], 320,
                        StreamsConfig(levels=(2,), seconds=0.2, block=0.2, warmup=2))


def test_a_resumed_run_measures_again_only_what_is_stale():
    """Records that share one pass under today's settings are kept, a variant that could not load under them too
    (it would fail again); other settings, a pass that failed mid-way or two passes measure all of them again."""
    from yoloq.passes import throughput_settings
    from yoloq.pipeline import needs_streams
    from yoloq.records import Record

    cfg = load_config(SMOKE)
    now = throughput_settings(cfg.streams, cfg.latency)

    def rec(name: str, **t) -> Record:
        return Record(name, "onnxruntime", "int8", throughput=t)

    ok = rec("a", settings=now, group="g", levels=[])
    assert needs_streams([ok, rec("b", error="no memory", settings=now)], cfg) == []
    assert len(needs_streams([ok, rec("b", error="failed mid-way")], cfg)) == 2
    assert len(needs_streams([ok, rec("b", settings=now, group="h", levels=[])], cfg)) == 2
    assert len(needs_streams([ok, rec("b", settings=now | {"seconds": 9}, group="g", levels=[])], cfg)) == 2


@pytest.mark.shared
def test_a_batched_export_gives_each_image_its_own_output(smoke_run):
    """ONNX Runtime and OpenVINO take a batch of the same graph: each image's output as at batch 1 (checked at
    load, on different inputs), and the check refuses a runtime that mixes the images of a batch."""
    from yoloq.artifacts import cached_artifact, workdir_of
    from yoloq.backends.batched import BatchError, check_batch
    from yoloq.backends.registry import get_backend

    cfg = load_config(SMOKE)
    img = read_image(next((SHARED / "datasets/coco-mini/val2017").glob("*.jpg")))
    from yoloq.preprocess import prepare

    x = np.concatenate([prepare([img], 320)[0], prepare([img[::-1].copy()], 320)[0], prepare([img[:, ::-1].copy()],
                                                                                            320)[0]])
    for v in cfg.variants:
        if v.format not in ("onnxruntime", "openvino"):
            continue
        r = smoke_run["records"][v.label]
        artifact = cached_artifact(workdir_of(smoke_run["dir"], v), r["key"])
        backend = get_backend(v.format)
        batched, single = backend.load_batched(artifact, 3, 320, 2), backend.load(artifact, 2)
        y = batched.predict(x)
        for i in range(3):  # real images: each its own detections, as alone
            alone = single.predict(x[i:i + 1])
            assert np.abs(y[i:i + 1] - alone).max() <= 1e-3 * np.abs(alone).max(), v.label
        assert np.abs(y[0] - y[1]).max() > 1.0, v.label  # different images, different outputs
        with pytest.raises(BatchError, match="differs from batch 1"):  # a graph that swaps a batch's images
            check_batch(lambda b: batched.predict(b)[::-1], single.predict, 3, 320, v.label)
