"""Unit tests of the parts between the libraries: record store, latency harness, artifact cache, progress,
machine fingerprint. A fake runtime stands in for a model only where the harness itself is under test."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from yoloq.artifacts import cached_artifact, remember_artifact, sibling_artifact
from yoloq.backends.base import Artifact
from yoloq.config import LatencyConfig
from yoloq.latency import measure, measure_interleaved
from yoloq.provenance import fingerprint, machine, machine_id, same_machine
from yoloq.records import Record, RecordStore, reference_of, same_backend, speedup


def rec(name: str, fmt: str = "onnxruntime", precision: str = "fp32", **kw) -> Record:
    return Record(name=name, format=fmt, precision=precision, **kw)


def test_record_store_is_one_atomic_writer(tmp_path: Path):
    store = RecordStore(tmp_path)
    store.put(rec("a", order=2))
    store.put(rec("b", order=1, metrics={"map50_95": 0.4}))
    store.put(rec("a", order=2, status="failed", reason="boom"))  # same name: replaced, not appended
    again = RecordStore(tmp_path)
    assert [r.name for r in again.all()] == ["b", "a"]  # config order, from the records alone
    assert again.get("a").status == "failed" and again.get("b").map == 0.4
    assert not list(tmp_path.glob(".records.jsonl.*"))  # no temporary file left behind
    with pytest.raises(ValueError):
        rec("x", status="maybe")


def test_record_keeps_unknown_fields_and_skips_foreign_lines(tmp_path: Path, capsys):
    (tmp_path / "records.jsonl").write_text(
        json.dumps(rec("a").to_dict() | {"from_the_future": {"x": 1}}) + "\n" + json.dumps({"hello": 1}) + "\n"
        + '{"name": "torn')
    store = RecordStore(tmp_path)
    assert [r.name for r in store.all()] == ["a"] and "line 2 is not a yoloq record" in capsys.readouterr().err
    store.save()
    assert json.loads((tmp_path / "records.jsonl").read_text().splitlines()[0])["from_the_future"] == {"x": 1}


def test_record_queries_use_fields_not_names():
    lat = {"p50_ms": 10.0, "group": "g"}
    records = [rec("ref", "torch", reference=True, order=1, latency={"p50_ms": 40.0, "group": "g"}),
               rec("ort32", order=2, latency={"p50_ms": 20.0, "group": "g"}),
               rec("ort8", precision="int8", order=3, latency=lat),
               rec("ort8q", precision="int8", order=4, latency=lat, pair={"role": "qat", "ptq": "ort8"})]
    assert reference_of(records).name == "ref"
    assert same_backend(records, records[3], "fp32").name == "ort32"
    sp = speedup(records, records[2])
    assert sp["vs_fp32"] == 2.0 and sp["fp32"] == "ort32" and sp["fp32_same_pass"] is True


class FakeRuntime:
    """Sleeps a fixed time per call: the harness under test owns the clock, not this."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls, self.info = seconds, 0, {}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        time.sleep(self.seconds)
        return np.zeros((batch.shape[0], 84, 10), np.float32)


def test_latency_harness_warms_up_and_times_enough_runs():
    rt = FakeRuntime(0.002)
    cfg = LatencyConfig(warmup=3, min_runs=20, min_seconds=0.0, images=2)
    stats = measure(rt, [np.zeros((64, 48, 3), np.uint8)] * 2, 64, lambda raw, lbs: None, cfg)
    assert stats.runs == 20 and rt.calls == 23  # warm-up runs are not timed
    assert 2.0 <= stats.stages["inference"]["p50_ms"] < 50 and stats.p50_ms <= stats.p90_ms <= stats.p99_ms


def test_interleaved_harness_times_every_runtime_side_by_side():
    slow, fast = FakeRuntime(0.004), FakeRuntime(0.001)
    cfg = LatencyConfig(warmup=1, min_runs=10, min_seconds=0.0, block=5)
    post = lambda raw, lbs: None  # noqa: E731
    stats = measure_interleaved({"slow": (slow, post), "fast": (fast, post)}, [np.zeros((32, 32, 3), np.uint8)],
                                32, cfg)
    assert stats["slow"].runs == stats["fast"].runs == 10  # same rounds for both
    assert stats["slow"].p50_ms > stats["fast"].p50_ms


def test_artifact_cache_reuses_only_the_same_key(tmp_path: Path):
    work = tmp_path / "artifacts" / "v"
    work.mkdir(parents=True)
    (work / "model.onnx").write_bytes(b"x" * 10)
    remember_artifact(work, "k1", Artifact(work / "model.onnx", "onnxruntime", "int8", {"q": 1}))
    got = cached_artifact(work, "k1")
    assert got is not None and got.size_bytes == 10 and got.info == {"q": 1}
    assert cached_artifact(work, "k2") is None  # other settings: exported again
    other = tmp_path / "artifacts" / "v-on-arm"  # the same export under another variant of the run
    assert sibling_artifact(other, "k2") is None
    twin = sibling_artifact(other, "k1")
    assert twin is not None and Path(twin.path) == work / "model.onnx"
    assert cached_artifact(other, "k1").path.resolve() == (work / "model.onnx").resolve()  # remembered
    # the owner exported again under other settings into the same file: the sharer's manifest no longer holds
    remember_artifact(work, "k3", Artifact(work / "model.onnx", "onnxruntime", "int8", {"q": 3}))
    assert cached_artifact(other, "k1") is None and sibling_artifact(other, "k1") is None
    remember_artifact(work, "k1", Artifact(work / "model.onnx", "onnxruntime", "int8", {"q": 1}))
    assert cached_artifact(other, "k1") is not None
    (work / "model.onnx").unlink()
    assert cached_artifact(work, "k1") is None  # the file is gone: exported again
    assert cached_artifact(other, "k1") is None and sibling_artifact(other, "k1") is None


def test_machine_fingerprint_decides_reuse():
    here = machine()
    assert same_machine(here, dict(here)) and here["id"] == machine_id(here)
    assert set(fingerprint(here)) == {"cpu", "arch", "isa", "cores", "gpu", "gpu_driver"}
    other = dict(here, isa=sorted(set(here["isa"]) ^ {"amx_tile"}))  # AMX where this machine lacks it, and back
    assert not same_machine(here, other) and machine_id(other) != here["id"]
    old = {"cpu": here["cpu"], "cores": here["cores"], "avx512_vnni": True}  # an older record's machine
    assert not same_machine(here, old)


def test_progress_without_a_terminal_prints_lines_with_eta(capsys):
    from yoloq import progress

    p = progress.Progress("calibrate", 4, "images")
    p._t0 -= 10  # a stage already 10 s long
    for _ in range(4):
        p.update()
    err = capsys.readouterr().err
    assert "calibrate: 4/4 images" in err and "elapsed" in err and "ETA" in err


def test_library_output_goes_to_the_log_and_progress_to_the_console(tmp_path: Path, capfd):
    import os

    from yoloq import progress

    progress.set_library_log(tmp_path / "libraries.log")
    try:
        with progress.step("export something"):
            print("LIBRARY BANNER")
            os.write(2, b"W1122 absl noise\n")
            progress.say("yoloq says")
    finally:
        progress.set_library_log(None)
    out, err = capfd.readouterr()
    log = (tmp_path / "libraries.log").read_text()
    assert "LIBRARY BANNER" in log and "absl noise" in log
    assert "LIBRARY BANNER" not in out + err and "absl noise" not in err
    assert "yoloq says" in err and "export something: done in" in err


def test_onnx_head_index_from_names_that_do_not_follow_ultralytics():
    """A foreign graph's output name gives an unknown head index (-1), not a crash."""
    from onnx import TensorProto, helper

    from yoloq.models import _onnx_head

    def head(name: str) -> int:
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 84, 8]) for n in ("x", "y")]
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name=name)], "g", io[:1], io[1:])
        return _onnx_head(helper.make_model(g), {}).index

    assert head("/model.23/Concat_3") == 23
    assert head("/model.dfl/x") == -1 and head("foo") == -1


def test_an_exports_cost_is_the_backends_own_figure_where_it_keeps_one():
    from yoloq.recover.cost import export_cost

    imx = {"export_seconds": 1460.2, "export_memory": {"peak_mb": 9123, "quantize": {"peak_mb": 9123}}}
    assert export_cost(imx, 0.4) == (1460.2, 9123)  # reused from the cache: what making it cost, not the copy
    ncnn = {"recovery_cost": {"calibration": {"s": 12.0, "peak_rss_mb": 2100}, "gptq": {"s": 45.0, "peak_rss_mb": 4800}}}
    assert export_cost(ncnn, 61.5) == (61.5, 4800)
    assert export_cost({}, 3.2) == (3.2, None)


def test_distillation_augments_only_by_mirror_and_zoom():
    """Distillation's augmentation (the teacher labels what the student sees): ``flip`` gives each image or its
    mirror, nothing else; ``flip-scale`` zooms too, with the letterbox's gray where a zoomed-out frame is empty, the
    same draws from the same seed; ``none`` passes the batch through."""
    import torch

    from yoloq.recover.distill import PAD, augment_batch

    x = torch.rand(4, 3, 32, 32)
    assert augment_batch(x, "none", np.random.default_rng(0)) is x
    flipped = augment_batch(x, "flip", np.random.default_rng(0))
    kinds = [bool(torch.equal(f, i)) or bool(torch.equal(f, torch.flip(i, dims=[2]))) for f, i in zip(flipped, x)]
    assert all(kinds) and not torch.equal(flipped, x)
    a, b = (augment_batch(x, "flip-scale", np.random.default_rng(1)) for _ in range(2))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    gray = torch.full((1, 3, 32, 32), PAD)
    zoomed = [augment_batch(gray * 0 + 0.9, "flip-scale", np.random.default_rng(s)) for s in range(20)]
    # a zoom out leaves gray borders around the image; a zoom in shows only the image
    assert any(torch.isclose(z[0, :, 0, 0], gray[0, :, 0, 0]).all() for z in zoomed)
    assert any(torch.isclose(z, torch.full_like(z, 0.9)).all() for z in zoomed)


def test_distillation_detection_loss_is_zero_only_at_the_teacher():
    """The detection distillation loss: 0 where the student's raw output is the teacher's, larger the further its
    scores move (a small score moved weighs more than under the squared error), and box errors count only where
    the teacher sees something."""
    import torch

    from yoloq.recover.distill import output_loss

    g = torch.Generator().manual_seed(0)
    t = torch.cat([torch.rand(1, 4, 50, generator=g) * 320, torch.rand(1, 80, 50, generator=g) * 0.05], 1)
    assert float(output_loss(t, t, 320, "detection")) == pytest.approx(0.0, abs=1e-6)
    small, large = t.clone(), t.clone()
    small[:, 4:] *= 1.5
    large[:, 4:] *= 3.0
    assert 0 < float(output_loss(small, t, 320, "detection")) < float(output_loss(large, t, 320, "detection"))
    # the same score error (+0.01) costs the same under mse on a score of 0.01 and of 0.5; under the detection loss
    # doubling the small score (what moves a detection's rank) costs far more
    def cost(score: float, kind: str) -> float:
        x = t.clone()
        x[:, 4:] = score
        y = x.clone()
        y[:, 4:] += 0.01
        return float(output_loss(y, x, 320, kind))

    assert cost(0.01, "mse") == pytest.approx(cost(0.5, "mse"), rel=1e-3)
    assert cost(0.01, "detection") > 5 * cost(0.5, "detection")
    empty = t.clone()
    empty[:, 4:] = 0.0  # the teacher sees nothing: box errors cost nothing
    shifted = empty.clone()
    shifted[:, :4] += 5.0
    assert float(output_loss(shifted, empty, 320, "detection")) == pytest.approx(0.0, abs=1e-6)


def test_a_learned_input_step_gets_lsqs_gradient_and_starts_where_calibration_put_it():
    """``distill_scales``: the int8 input step learns as LSQ's does: at the calibrated scale the fake-quantized
    convolution computes what the fixed one does; the step's gradient is ``round(x/d) - x/d`` inside the range and
    the clip value (+-127) outside it, so clipping is something it can learn; without it there is no parameter."""
    import torch

    from yoloq.recover.distill import Grid, _fake_quantize

    def conv() -> torch.nn.Conv2d:
        c = torch.nn.Conv2d(1, 1, 1, bias=False)
        c.weight.data.fill_(1.0)
        return c

    grid = Grid(np.array([127.0], np.float32), 127, 10.0)  # input step 0.1: [-12.7, 12.7] before clipping
    fixed, learned = conv(), conv()
    assert _fake_quantize(fixed, grid) is None
    log_step = _fake_quantize(learned, grid, learn_step=True)
    x = torch.tensor([0.26, -0.44, 3.0, 20.0, -30.0]).view(1, 1, 1, 5)
    assert torch.allclose(fixed(x), learned(x), atol=1e-6)
    assert torch.allclose(learned(x).flatten(), torch.tensor([0.3, -0.4, 3.0, 12.7, -12.7]), atol=1e-5)
    learned(x).sum().backward()
    d = 0.1
    v = torch.clamp(x.flatten() / d, -127, 127)
    expected = float((torch.round(v) - torch.where(v.abs() < 127, v, torch.zeros_like(v))).sum()) * d  # d(exp u)/du = d
    assert float(log_step.grad) == pytest.approx(expected, rel=1e-4)


def test_distillation_cosine_schedule_ends_near_zero_and_still_learns():
    """``distill_schedule: cosine``: the learning rate falls from its peak to 0 over the budget (so the last steps
    barely move a weight), while ``constant`` holds it; a cosine run on a small convolution still lowers its
    held-out loss against the teacher, and its record names the schedule."""
    import torch

    from yoloq.recover.distill import Grid, distill, lr_factor

    assert [lr_factor(d, "constant") for d in (0.0, 0.5, 1.0)] == [1.0, 1.0, 1.0]
    assert lr_factor(0.0, "cosine") == 1.0 and lr_factor(0.5, "cosine") == pytest.approx(0.5)
    assert lr_factor(599 / 600, "cosine") < 1e-4 and lr_factor(2.0, "cosine") == 0.0

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)

        def forward(self, x):
            return self.conv(x).flatten(2)  # [B, 6, N]: a raw "head output" of 4 box and 2 class rows

    torch.manual_seed(0)
    model = Tiny()
    rng = np.random.default_rng(0)
    images = [rng.random((1, 3, 12, 12), dtype=np.float32) for _ in range(12)]
    w = model.conv.weight.detach().numpy()
    grid = Grid(127.0 / np.abs(w).reshape(6, -1).max(1) / 8, 127, 127.0)  # coarse weights: rounding costs
    _, result = distill(model, {"conv": grid}, images, 12, 1.0, 1, steps=40, schedule="cosine")
    assert result["schedule"] == "cosine" and result["steps"] == 40
    assert result["kept"] and result["held_out_loss_after"] < result["held_out_loss_before"], result
