"""yoloq tune: the noise-aware rule on hand-made figures, the machine rule on recorded fingerprints, the refusal
of a tuning split that overlaps the evaluation or calibration images, bad input, and a real small search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from yoloq.backends.base import lacks_vnni
from yoloq.backends.registry import get_backend, resolve_config
from yoloq.config import load_config
from yoloq.tune.rule import Trial, choose

# recorded fingerprints (records.jsonl 'machine' fields): an AVX2-only EPYC and an AVX-512 VNNI+BF16 EPYC
AVX2_ONLY = {"cpu": "AMD EPYC", "arch": "x86_64", "isa": ["avx2"], "cores": 2, "id": "amd-epyc-2c-f7df18"}
VNNI = {"cpu": "AMD EPYC", "arch": "x86_64", "isa": ["avx2", "avx512_bf16", "avx512_vnni", "avx512f"], "cores": 2,
        "id": "amd-epyc-2c-792874"}
ARM = {"cpu": "Cortex-A76", "arch": "aarch64", "isa": ["asimddp"], "cores": 4}


def _ci(drop: float, lo: float, hi: float) -> dict:
    return {"drop": drop, "lo": lo, "hi": hi, "significant": lo > 0 or hi < 0}


def _trial(name: str, changed: int, agreement: float, retention: float, p50: float = 10.0, float_p50: float = 20.0,
           vs_agree: tuple[float, float, float] | None = None, vs_map: tuple[float, float, float] | None = None
           ) -> Trial:
    t = Trial(f"v@{name}", "v", "fmt", name, {}, "", changed, status="ok", images=500, map50_95=0.4 * retention,
              retention=retention, agreement=agreement, p50_ms=p50, float_p50_ms=float_p50, float_name="fmt-fp32",
              size_mb=3.0)
    if vs_agree:
        t.vs_leader["agreement"] = _ci(*vs_agree)
    if vs_map:
        t.vs_leader["map"] = _ci(*vs_map)
    return t


def test_a_candidate_shown_equivalent_to_a_simpler_one_loses_to_it():
    base = _trial("default", 0, 0.960, 0.995, vs_agree=(0.004, -0.002, 0.010), vs_map=(0.001, -0.003, 0.004))
    best = _trial("stem4", 1, 0.964, 0.998)
    won = choose([base, best], 0.99)
    assert won is base and base.chosen and not best.chosen
    assert "shown equivalent" in best.verdict and base.verdict.startswith("chosen")


def test_an_interval_that_includes_zero_is_not_an_equivalence():
    """Tuned on 500 images, ACIQ kept 92.8% and the stem in float 97.9%: the interval of their mAP difference
    reached -0.0003, so it included 0, but it ran to +0.04: not equivalent, and below the budget accuracy comes
    first, so the more accurate one wins though ACIQ agreed as much and is as simple."""
    aciq = _trial("aciq", 1, 0.870, 0.928, vs_agree=(0.002, -0.010, 0.012), vs_map=(0.020, -0.0003, 0.040))
    stem = _trial("stem2-max", 1, 0.866, 0.979)
    assert choose([aciq, stem], 0.99) is stem
    assert aciq.verdict.startswith("not shown equivalent") and "map +0.0200" in aciq.verdict
    assert "no candidate keeps 99%" in stem.verdict


def test_a_simpler_candidate_that_may_be_better_still_ties():
    """Tuned on 500 images (NCNN, the stem in float): 8-bit 3x3 weights with no clipping kept 99.5%, the same with
    GPTQ rounding 99.2% and agreed 0.001 more; best - simpler ran from -0.0055 to +0.0044 mAP: the simpler may be
    better, is at most 0.0044 worse, so it ties and wins as the simpler."""
    simpler = _trial("w8-max", 2, 0.9123, 0.995, vs_agree=(0.0010, -0.0084, 0.0090), vs_map=(-0.0009, -0.0055, 0.0044))
    best = _trial("w8-gptq-max", 3, 0.9134, 0.992)
    assert choose([simpler, best], 0.99) is simpler


def test_the_best_wins_when_its_interval_excludes_the_simpler_one():
    base = _trial("default", 0, 0.940, 0.990, vs_agree=(0.025, 0.012, 0.038), vs_map=(0.001, -0.004, 0.006))
    best = _trial("stem4", 1, 0.965, 0.998)
    assert choose([base, best], 0.99) is best
    assert base.verdict.startswith("not shown equivalent") and "agreement" in base.verdict


def test_speed_then_size_break_ties_among_equally_simple_candidates():
    a = _trial("p90", 1, 0.960, 0.995, p50=12.0, vs_agree=(0.0, -0.01, 0.01), vs_map=(0.0, -0.004, 0.004))
    b = _trial("stem2", 1, 0.961, 0.996, p50=9.0)
    c = _trial("stem4", 1, 0.958, 0.994, p50=8.0, vs_agree=(0.003, -0.01, 0.01), vs_map=(0.0, -0.004, 0.004))
    assert choose([a, b, c], 0.99) is c


def test_timings_within_noise_do_not_decide_the_best_agreement_does():
    """Two equally simple candidates with the same graph (ranges, rounding) time 2% apart: that is noise, so
    the one that agrees more wins; a candidate 10% faster still wins on speed."""
    best = _trial("gptq", 1, 0.9645, 0.994, p50=25.0, float_p50=46.0)
    tie = {"float_p50": 46.0, "vs_agree": (0.0067, -0.001, 0.0125), "vs_map": (0.0, -0.003, 0.004)}
    cal = _trial("cal64", 1, 0.9578, 0.994, p50=24.4, **tie)
    assert choose([best, cal], 0.99) is best
    assert "agrees more" in cal.verdict
    quick = _trial("cal64", 1, 0.9578, 0.994, p50=22.0, **tie)
    assert choose([_trial("gptq", 1, 0.9645, 0.994, p50=25.0, float_p50=46.0), quick], 0.99) is quick


def test_never_an_int8_setting_slower_than_the_float_variant():
    slow = _trial("default", 0, 0.99, 1.0, p50=30.0, float_p50=20.0)
    fast = _trial("stem0", 1, 0.90, 0.97, p50=15.0, float_p50=20.0)
    assert choose([slow, fast], 0.99) is fast
    assert "slower here" in slow.verdict
    only_slow = _trial("default", 0, 0.99, 1.0, p50=30.0, float_p50=20.0)
    assert choose([only_slow], 0.99) is None and "never recommended" in only_slow.verdict


def test_pruning_keeps_a_candidate_the_first_images_cannot_tell_from_the_best():
    """Successive halving keeps the better half by agreement, the baseline, and a candidate below the half whose
    paired interval against the best includes 0; one the interval puts below the best is pruned."""
    from types import SimpleNamespace

    import numpy as np

    from yoloq.tune.search import TuneSearch

    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.004, 400)
    agree = {"base": 0.950, "a": 0.962, "b": 0.960, "close": 0.958, "far": 0.930}
    trials = [Trial(f"v@{n}", "v", "fmt", n, {}, "", 0 if n == "base" else 1, status="ok", images=125,
                    agreement=x, rounds=[{"images": 125}]) for n, x in agree.items()]
    boot = {f"v@{n}": x + noise + rng.normal(0, 0.001, 400) for n, x in agree.items()}  # paired resamples
    boot["v@close"] = agree["close"] + noise + rng.normal(0, 0.004, 400)  # its own noise: not told from "a"
    TuneSearch._prune(SimpleNamespace(tune=SimpleNamespace(keep=0.4, seed=0)), trials, boot)
    status = {t.candidate: t.status for t in trials}
    assert status == {"base": "ok", "a": "ok", "b": "ok", "close": "ok", "far": "pruned"}, status
    close, far = trials[3], trials[4]
    assert not close.rounds[-1]["kept_as_close"]["significant"]
    assert "below the best" in far.reason and "ranked 5 of 5" in far.reason


def test_the_budget_comes_before_agreement():
    keeps = _trial("default", 0, 0.95, 0.992)
    agrees = _trial("stem0", 1, 0.97, 0.985, vs_agree=(-0.02, -0.03, -0.01), vs_map=(-0.007, -0.01, 0.0))
    assert choose([keeps, agrees], 0.99) is keeps
    assert "keeps 98.5%" in agrees.verdict


def test_the_search_space_follows_the_machine():
    """Without VNNI, ONNX Runtime's 7-bit weights and NNCF's overflow fix on every layer are the baseline (its
    u8s8 kernels can saturate there), with the saturation-prone form kept as a candidate for evidence; with
    VNNI (or on Arm) they are not forced."""
    assert lacks_vnni(AVX2_ONLY) and not lacks_vnni(VNNI) and not lacks_vnni(ARM)
    ort, ov = get_backend("onnxruntime"), get_backend("openvino")
    plain, safe = ort.tune_space(VNNI), ort.tune_space(AVX2_ONLY)
    assert all(not c.options.get("reduce_range") for c in plain)
    assert safe[0].options == {"reduce_range": True} and "no VNNI" in safe[0].why
    assert any(not c.options.get("reduce_range") for c in safe[1:])
    assert ov.tune_space(AVX2_ONLY)[0].options == {"overflow_fix": "enable"}
    assert ov.tune_space(VNNI)[0].options == {}
    for fmt in ("onnxruntime", "openvino", "litert"):  # every candidate is a valid variant of its backend
        for c in get_backend(fmt).tune_space(AVX2_ONLY):
            cfg = load_config("configs/smoke.yaml")
            v = next(v for v in cfg.variants if v.format == fmt and str(v.precision) == "int8")
            import dataclasses

            resolve_config(dataclasses.replace(cfg, variants=(dataclasses.replace(v, options=dict(c.options)),)))


def _config(tmp_path: Path, **changes) -> Path:
    cfg = yaml.safe_load(Path("configs/smoke.yaml").read_text())
    cfg["variants"] = [{"format": "torch", "precision": "fp32"}, {"format": "onnxruntime", "precision": "int8"}]
    cfg["tune"] = {"data": {"dataset": "coco1k", "split": "tune", "max_images": 12}, "first_images": 6,
                   "bootstrap": 200, "sensitivity": [1], "sensitivity_layers": [1], "sensitivity_images": 2}
    cfg["output"] = str(tmp_path / "out")
    for k, v in changes.items():
        cfg[k] = v
    p = tmp_path / "tune.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.shared
@pytest.mark.parametrize("tune, words", [
    ({"data": {"dataset": "coco-mini", "split": "val2017"}}, "shares an image with the evaluation split"),
    ({"data": {"dataset": "coco-mini", "split": "train2017"}}, "overlaps the tuning images"),
    ({}, "tune.data"),
    ({"data": {"dataset": "coco1k", "split": "tune"}, "keep": 2}, "tune.keep"),
])
def test_bad_tune_input_is_one_line(tmp_path, tune, words):
    """The evaluation split, or a split of the calibration pool, is refused as a tuning split (one line, exit 2)."""
    proc = run_cli("tune", str(_config(tmp_path, tune=tune)), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3


@pytest.mark.shared
def test_bad_tune_flags_are_one_line(tmp_path):
    cfg = _config(tmp_path)
    for args, words in ((["--variant", "nope"], "not an int8 variant"), (["--budget", "1.5"], "tune.min_retention"),
                        (["--minutes", "0"], "tune.minutes"), (["--candidate", "nope"], "not a candidate of")):
        proc = run_cli("tune", str(cfg), *args, timeout=300)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.shared
def test_a_search_can_try_only_the_candidates_it_names(tmp_path):
    """``--candidate``: the backend's baseline and the named candidates, in the space's order; nothing else."""
    from yoloq.provenance import machine
    from yoloq.tune.search import TuneSearch

    space = [c.name for c in get_backend("onnxruntime").tune_space(machine())]
    search = TuneSearch(load_config(_config(tmp_path)), tmp_path / "s", None, [space[-1]])
    assert [t.candidate for t in search.trials] == [space[0], space[-1]]


@pytest.mark.shared
def test_tune_searches_and_writes_a_config_that_runs(tmp_path):
    """A real search (ONNX Runtime INT8 candidates, imgsz 320, 12 tuning images in two rounds): every candidate
    kept with its figures and verdict, one chosen, a tuned.yaml that is a valid config carrying the choice; the
    sensitivity candidates keep the worst block (a pattern) and the worst single layer (its node) in float. The
    distillation candidates (minutes of training each) are left out here: tests/test_ort_recovery.py exports one."""
    from yoloq.provenance import machine

    out = tmp_path / "search"
    space = [c for c in get_backend("onnxruntime").tune_space(machine())
             if c.options.get("weight_rounding") != "distill"]
    proc = run_cli("tune", str(_config(tmp_path)), "--out", str(out),
                   *[a for c in space[1:] for a in ("--candidate", c.name)], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "tune.json").read_text())
    trials = data["trials"]
    names = [c.name for c in space] + ["worst1", "worst1-layers"]
    assert [t["candidate"] for t in trials] == names
    worst, layer = trials[-2:]  # the block / the layer the ranking puts worst, outside the baseline's scope, in float
    assert worst["changed"] == 1 and "1 blocks yoloq sensitivity ranks worst in float (model." in worst["why"]
    assert len(worst["options"]["float_patterns"]) == 1
    assert layer["changed"] == 1 and "1 layers yoloq sensitivity ranks worst in float (/model." in layer["why"]
    assert list(layer["options"]) == ["float_nodes"] and len(layer["options"]["float_nodes"]) == 1
    assert layer["options"]["float_nodes"][0] in layer["why"] and layer["options"]["float_nodes"][0].endswith("Conv")
    assert sum(t["chosen"] for t in trials) == 1
    assert {t["status"] for t in trials} <= {"ok", "pruned"}
    first = sorted(trials, key=lambda t: -t["rounds"][0]["agreement"])
    for rank, t in enumerate(first, 1):  # the better half and the baseline go on; below it, only the close ones
        if rank <= -(-len(trials) // 2) or not t["changed"]:
            assert t["status"] == "ok", t
        else:
            assert (t["status"] == "ok") == ("kept_as_close" in t["rounds"][0]), t
    for t in trials:
        assert t["verdict"] and t["rounds"] and t["rounds"][0]["images"] == 6
        if t["status"] == "ok":
            assert t["images"] == 12 and 0 < t["agreement"] <= 1 and t["p50_ms"] > 0 and t["float_p50_ms"] > 0
            assert t["drop"]["lo"] <= t["drop"]["drop"] <= t["drop"]["hi"]
            assert t["export_s"] > 0  # what its export cost, in tune.md's export column
    assert data["machine"]["id"] and data["images"] == 12
    won = next(t for t in trials if t["chosen"])
    md = (out / "tune.md").read_text()
    assert f"**Chosen: {won['candidate']}**" in md and all(f"| {n} |" in md for n in names)
    tuned = resolve_config(load_config(out / "tuned.yaml"))
    v = next(v for v in tuned.variants if v.label == "onnxruntime-int8")
    assert all(v.options[k] == x for k, x in won["options"].items())
    assert "tune chose" in (out / "tuned.yaml").read_text()
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert {r["name"] for r in records} >= {t["name"] for t in trials if t["status"] == "ok"}
    assert all(r["machine"]["id"] == data["machine"]["id"] for r in records)


@pytest.mark.shared
def test_sensitivity_blocks_become_patterns_of_exactly_their_nodes():
    """Each ONNX block the sensitivity ranking names, written as a float_patterns entry, matches the same nodes."""
    import re

    import onnx
    from conftest import SHARED

    from yoloq.backends.onnxruntime.sensitivity import block_pattern, groups_of

    path = SHARED / "models" / "yolo11n.onnx"
    names = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node]
    groups = groups_of(path)
    assert {"model.10", "model.23", "model.23/cv2.0", "model.23/dfl"} <= set(groups)
    for group, nodes in groups.items():
        rx = re.compile(block_pattern(group))
        assert {n for n in names if rx.search(n)} == set(nodes), group
