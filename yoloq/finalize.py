"""After the variants: paired bootstrap intervals and budget verdicts go into the records."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.bootstrap import PerImageEval, interval, paired_bootstrap, resample_weights, resampled_maps, weighted_map
from yoloq.budget import verdict
from yoloq.config import BudgetConfig, ReportConfig
from yoloq.records import load_records, write_atomic
from yoloq.report import reference_of, speedup


def evaldata_path(run_dir: Path, name: str) -> Path:
    """Where a variant's per-image evaluation (for the bootstrap) is kept."""
    return run_dir / "evaldata" / f"{name}.npz"


def _qat_against_ptq(run_dir: Path, records: list[dict[str, Any]], report: ReportConfig) -> int:
    """For each ``<ptq>-qat`` variant beside its ``<ptq>`` variant: the paired interval of PTQ - QAT
    mAP50-95 (positive: PTQ is better), as ``metrics.qat_vs_ptq`` of the QAT record. Returns how many."""
    by_name = {r["name"]: r for r in records if r.get("status") == "ok"}
    n = 0
    for name, qat in by_name.items():
        ptq = by_name.get(name[: -len("-qat")]) if name.endswith("-qat") else None
        files = [evaldata_path(run_dir, x["name"]) for x in (ptq, qat) if x]
        if ptq is None or not report.bootstrap or not all(f.is_file() for f in files):
            continue
        old = qat["metrics"].get("qat_vs_ptq") or {}
        if (old.get("ptq_key"), old.get("key"), old.get("resamples"), old.get("seed")) == \
                (ptq.get("key"), qat.get("key"), report.bootstrap, report.seed):
            continue
        a, b = PerImageEval.load(files[0]), PerImageEval.load(files[1])
        if not np.array_equal(a.image_ids, b.image_ids):
            continue
        ci = paired_bootstrap(a, b, report.bootstrap, report.seed)
        qat["metrics"]["qat_vs_ptq"] = ci | {"ptq": ptq["name"], "ptq_key": ptq.get("key"), "key": qat.get("key")}
        n += 1
    return n


def finalize(run_dir: Path, reference: str | None, budget: BudgetConfig, report: ReportConfig) -> dict[str, Any]:
    """Attach ``metrics.map_drop_ci`` and ``budget`` to every record of ``run_dir`` (one atomic rewrite).

    Returns:
        What was done: the reference's name, how many intervals, and the bootstrap's seconds.
    """
    path = run_dir / "records.jsonl"
    records = load_records(path)
    ref = reference_of(records, reference)
    t0 = time.perf_counter()
    n = 0
    ref_file = evaldata_path(run_dir, ref["name"]) if ref else None

    def current(r: dict[str, Any]) -> bool:  # an interval already computed for this exact pair and setting
        ci = r.get("metrics", {}).get("map_drop_ci") or {}
        return (ci.get("reference_key"), ci.get("key"), ci.get("resamples"), ci.get("seed")) == \
            (ref.get("key"), r.get("key"), report.bootstrap, report.seed)

    todo = [r for r in records if ref and r["status"] == "ok" and r["name"] != ref["name"]
            and evaldata_path(run_dir, r["name"]).is_file() and not current(r)]
    if ref and report.bootstrap and todo and ref_file and ref_file.is_file():
        ref_pe = PerImageEval.load(ref_file)
        n_img = len(ref_pe.image_ids)
        weights = resample_weights(n_img, report.bootstrap, report.seed)  # the same resamples for every variant
        ref_maps = resampled_maps(ref_pe, weights)
        ref_full = float(weighted_map(ref_pe, np.ones(n_img))[0])
        for r in todo:
            pe = PerImageEval.load(evaldata_path(run_dir, r["name"]))
            if not np.array_equal(pe.image_ids, ref_pe.image_ids):
                continue  # evaluated on other images (an older run's record): no paired interval
            drop = ref_full - float(weighted_map(pe, np.ones(n_img))[0])
            ci = interval(ref_maps, resampled_maps(pe, weights), drop, report.seed)
            r["metrics"]["map_drop_ci"] = ci | {"reference": ref["name"], "reference_key": ref.get("key"),
                                                "key": r.get("key")}
            n += 1
    n += _qat_against_ptq(run_dir, records, report)
    seconds = time.perf_counter() - t0
    for r in records:
        r["budget"] = verdict(r, ref, budget)
        if r.get("status") == "ok":
            r["speedup"] = speedup(records, r)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    kept = sum(1 for r in records if ref and r.get("metrics", {}).get("map_drop_ci") and current(r)) - n
    return {"reference": ref["name"] if ref else None, "intervals": n, "kept": max(kept, 0),
            "bootstrap_s": seconds, "resamples": report.bootstrap}
