"""A run measures on its own machine; `yoloq reproduce` re-runs a folder's config here and compares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

pytestmark = pytest.mark.shared

TINY = {"model": "yolo11n.pt", "imgsz": 320, "data": {"dataset": "coco-mini", "max_images": 4},
        "calibration": {"sources": [{"dataset": "coco-mini", "split": "train2017"}], "images": 4},
        "latency": {"warmup": 1, "min_runs": 3, "min_seconds": 0, "images": 2}, "report": {"bootstrap": 0},
        "variants": [{"format": "torch"}, {"format": "onnxruntime"}, {"format": "onnxruntime", "precision": "int8"}]}


def lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def rewrite(p: Path, change) -> None:  # noqa: ANN001 - a function of one record
    p.write_text("".join(json.dumps(change(r)) + "\n" for r in lines(p)))


@pytest.fixture(scope="module")
def there(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run, then edited to look measured on another machine (AMX, BF16 for ORT INT8)."""
    d = tmp_path_factory.mktemp("repro")
    cfg = d / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TINY | {"output": str(d / "out")}))
    proc = run_cli("run", str(cfg))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = [p.parent for p in (d / "out").glob("*/records.jsonl")]  # one folder per machine
    return run


def test_a_run_folder_is_per_machine_and_reused_only_there(there: Path, tmp_path: Path):
    rec = lines(there / "records.jsonl")[0]
    assert there.name == rec["machine"]["id"] and rec["machine"]["isa"] is not None
    other = tmp_path / "other"
    other.mkdir()
    (other / "records.jsonl").write_text((there / "records.jsonl").read_text())
    (other / "config.yaml").write_text((there / "config.yaml").read_text())
    rewrite(other / "records.jsonl", lambda r: r | {"machine": r["machine"] | {"cpu": "Elsewhere CPU", "id": "x"}})
    proc = run_cli("run", str(other / "config.yaml"), "--out", str(other))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already recorded, kept" not in proc.stderr  # another machine's records are measured anew
    assert "measured on another machine" in proc.stderr
    assert {r["machine"]["cpu"] for r in lines(other / "records.jsonl")} == {rec["machine"]["cpu"]}
    (aside,) = other.glob("records.*.jsonl")
    assert {r["machine"]["cpu"] for r in lines(aside)} == {"Elsewhere CPU"}  # set aside, not lost


def test_reproduce_compares_variant_by_variant(there: Path, tmp_path: Path):
    old = tmp_path / "old"
    old.mkdir()
    for f in ("records.jsonl", "config.yaml"):
        (old / f).write_text((there / f).read_text())

    def elsewhere(r: dict) -> dict:
        r["machine"] = r["machine"] | {"cpu": "Xeon with AMX", "isa": ["amx_tile"], "id": "xeon-amx"}
        if r["name"] == "onnxruntime-int8":  # the other machine ran this one in another precision
            r["runtime"]["precision_ran"] = "int8 (bf16 for float ops)"
            r["metrics"]["map50_95"] += 0.01
        return r

    rewrite(old / "records.jsonl", elsewhere)
    proc = run_cli("reproduce", str(old), "--out", str(tmp_path / "here"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = (tmp_path / "here" / "reproduce.md").read_text()
    assert "Xeon with AMX" in text and "different machines" in text
    row = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ") and "variant" not in ln}
    assert "identical" in row["torch-fp32"] and "identical" in row["onnxruntime-fp32"]
    assert "differs, explained" in row["onnxruntime-int8"] and "bf16 for float ops" in row["onnxruntime-int8"]
    # the same precision ran with the same versions but the mAP differs: that is a failed reproduction
    rewrite(old / "records.jsonl", lambda r: r | {"metrics": r["metrics"] | {"map50_95": 0.1}}
            if r["name"] == "onnxruntime-fp32" else r)
    proc = run_cli("reproduce", str(old), "--out", str(tmp_path / "here"))
    assert proc.returncode == 1 and "MISMATCH" in (tmp_path / "here" / "reproduce.md").read_text()


def test_reproduce_bad_inputs_are_one_line(tmp_path: Path):
    (tmp_path / "noconfig").mkdir()
    (tmp_path / "noconfig" / "records.jsonl").write_text("")
    proc = run_cli("reproduce", str(tmp_path / "noconfig"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("yoloq: error:") and "no config.yaml" in proc.stderr
    proc = run_cli("reproduce", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "no records.jsonl" in proc.stderr
    (tmp_path / "noconfig" / "config.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "noconfig" / "records.jsonl").write_text('{"name": "torch-fp32", "format": "torch", "prec\n')
    proc = run_cli("reproduce", str(tmp_path / "noconfig"))
    assert proc.returncode == 2 and "line 1 is damaged" in proc.stderr.strip().splitlines()[-1]


def _rec(precision: str, map50_95: float, isa: list[str], ran: str | None = None, versions: dict | None = None):
    from yoloq.records import Record

    return Record(name="v", format="onnxruntime", precision=precision, runtime={"precision_ran": ran or precision},
                  metrics={"map50_95": map50_95, "per_class": {str(k): 0.5 for k in range(80)}},
                  machine={"isa": isa}, versions=versions or {"onnxruntime": "1.23.2"})


VNNI_ISA = ["avx2", "avx512_bf16", "avx512_vnni", "avx512f"]
AVX2_ISA = ["avx2"]


def test_reproduce_tells_float_rounding_and_kernels_from_a_real_change():
    from yoloq.report.reproduce import rounding_tolerance, verdict

    assert rounding_tolerance(_rec("fp32", 0.4, VNNI_ISA)) == 1 / 8000  # 80 classes: one swap below the top 10
    # FP32, AVX-512 there and AVX2 here, one score's rounding apart (1e-6, as seen between those machines)
    v, why, bad = verdict(_rec("fp32", 0.448, VNNI_ISA), _rec("fp32", 0.448 + 1e-6, AVX2_ISA))
    assert v == "identical within float rounding" and not bad and "1.3e-04" in why
    # ... but not when the two runs' detections disagree, nor beyond what rounding can do
    assert verdict(_rec("fp32", 0.448, VNNI_ISA), _rec("fp32", 0.448 + 1e-6, AVX2_ISA), agrees=0.98)[2]
    assert verdict(_rec("fp32", 0.448, VNNI_ISA), _rec("fp32", 0.451, AVX2_ISA))[0] == "MISMATCH"
    # INT8 on a VNNI machine there, without VNNI here: explained, naming the instructions and the size
    v, why, bad = verdict(_rec("int8", 0.4413, VNNI_ISA), _rec("int8", 0.4381, AVX2_ISA), agrees=0.97)
    assert v == "differs, explained" and not bad
    assert "-AVX-512 VNNI" in why and "-0.0032" in why and "agree 0.9700" in why
    # the same INT8 kernels and versions, another mAP: a real change, exit 1
    v, _, bad = verdict(_rec("int8", 0.4413, VNNI_ISA), _rec("int8", 0.4381, VNNI_ISA))
    assert v == "MISMATCH" and bad
    # another library version: explained by it
    newer = _rec("int8", 0.4381, VNNI_ISA, versions={"onnxruntime": "1.24"})
    v, why, bad = verdict(_rec("int8", 0.4413, VNNI_ISA), newer)
    assert v == "differs, explained" and "onnxruntime 1.23.2 -> 1.24" in why and not bad
