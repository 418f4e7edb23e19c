"""After the variants: paired bootstrap intervals, agreement with the reference, budget verdicts and speed-ups
go into the records."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from yoloq.agreement import AGREE_CONF, StoredDetections, agreement
from yoloq.bootstrap import PerImageEval, interval, paired_bootstrap, resample_weights, resampled_maps, weighted_map
from yoloq.budget import verdict
from yoloq.config import BudgetConfig, ReportConfig
from yoloq.passes import detections_path, evaldata_path
from yoloq.progress import bar
from yoloq.records import Record, RecordStore, reference_of, speedup


def _map_on(pe: PerImageEval | None, image_ids: np.ndarray) -> float | None:
    """mAP50-95 of an evaluation on ``image_ids`` alone; None where it lacks one of them."""
    if pe is None or not np.isin(image_ids, pe.image_ids).all():
        return None
    return float(weighted_map(pe.subset(image_ids), np.ones(len(image_ids)))[0])


def _pairs(store: RecordStore, report: ReportConfig, ref: Record | None = None) -> int:
    """Paired intervals between records that name a partner: a QAT record's ``pair.ptq`` (PTQ - QAT, as
    ``metrics.qat_vs_ptq``; positive: PTQ is better) and an emulated twin's ``pair.host`` (x86 - emulated, as
    ``metrics.vs_host``, with the twin's agreement with the x86 detections, whether they are identical, and the
    reference's mAP on the twin's images).
    Returns how many were computed."""
    n = 0
    ref_file = evaldata_path(store.run_dir, ref.name) if ref else None
    ref_pe = None  # the reference's evaluation, loaded once where a twin needs it
    for r in store.all():
        for field, metric in (("ptq", "qat_vs_ptq"), ("host", "vs_host")):
            other = store.get(r.pair.get(field, "")) if r.pair else None
            if other is None or not (r.ok and other.ok) or not report.bootstrap:
                continue
            files = [evaldata_path(store.run_dir, x.name) for x in (other, r)]
            if not all(f.is_file() for f in files):
                continue
            old = r.metrics.get(metric) or {}
            if (old.get(f"{field}_key"), old.get("key"), old.get("resamples"), old.get("seed")) == \
                    (other.key, r.key, report.bootstrap, report.seed) and (field != "host" or "reference_map" in old):
                continue
            a, b = PerImageEval.load(files[0]), PerImageEval.load(files[1])
            part = field == "host" and len(b.image_ids) < len(a.image_ids) and np.isin(b.image_ids, a.image_ids).all()
            if part:  # a twin scored on the first images only: its x86 record on those same images
                a = a.subset(b.image_ids)
            if not np.array_equal(a.image_ids, b.image_ids):
                continue
            ci = paired_bootstrap(a, b, report.bootstrap, report.seed)
            if field == "host" and ref_pe is None and ref_file is not None and ref_file.is_file():
                ref_pe = PerImageEval.load(ref_file)  # the reference on a twin's images: its score reads against it
            r.metrics[metric] = ci | {field: other.name, f"{field}_key": other.key, "key": r.key} | \
                (_twin_agreement(store, other, r) if field == "host" else {}) | \
                ({"images": int(len(b.image_ids)), "host_map": _map_on(a, b.image_ids)} if part else {}) | \
                ({"reference_map": _map_on(ref_pe, b.image_ids)} if field == "host" else {})
            n += 1
    return n


def _twin_agreement(store: RecordStore, host: Record, twin: Record) -> dict[str, Any]:
    """How closely an emulated twin reproduces its x86 record's detections: pycocotools agreement against the x86
    confident boxes, whether every detection is the same, and the largest score change of a kept box."""
    files = [detections_path(store.run_dir, x.name) for x in (host, twin)]
    if not all(f.is_file() for f in files):
        return {}
    a, b = StoredDetections.load(files[0]), StoredDetections.load(files[1])
    a = a.subset(b.image_ids)
    same = all(np.array_equal(x, y) for x, y in ((a.det_image, b.det_image), (a.category, b.category),
                                                 (a.bbox, b.bbox), (a.score, b.score)))
    try:
        agree = agreement(a, b)
    except ValueError:
        return {"identical": same}
    return {"identical": same, "agreement": agree["map50_95"], "agreement_boxes": agree["boxes"],
            "detections": [int(len(a.score)), int(len(b.score))]}


def _agreements(store: RecordStore, ref: Record | None) -> int:
    """Each ok record's agreement with the reference's confident detections (``metrics.agreement``), where both
    detections are kept and the record does not already hold it for this pair. Returns how many."""
    ref_file = detections_path(store.run_dir, ref.name) if ref else None
    if ref is None or ref_file is None or not ref_file.is_file():
        return 0
    reference = None
    n = 0
    for r in store.all():
        f = detections_path(store.run_dir, r.name)
        old = r.metrics.get("agreement") or {}
        if not r.ok or r.name == ref.name or not f.is_file() or \
                (old.get("reference_key"), old.get("key"), old.get("conf")) == (ref.key, r.key, AGREE_CONF):
            continue
        reference = reference or StoredDetections.load(ref_file)
        try:
            a = agreement(reference, StoredDetections.load(f))
        except ValueError:
            continue  # evaluated on other images (an older run's record): no agreement
        r.metrics["agreement"] = a | {"reference": ref.name, "reference_key": ref.key, "key": r.key}
        n += 1
    return n


def _current(r: Record, ref: Record, report: ReportConfig) -> bool:
    """Whether ``r`` already holds the interval for this exact pair and setting."""
    ci = r.metrics.get("map_drop_ci") or {}
    return (ci.get("reference_key"), ci.get("key"), ci.get("resamples"), ci.get("seed")) == \
        (ref.key, r.key, report.bootstrap, report.seed)


def finalize(store: RecordStore, budget: BudgetConfig, report: ReportConfig) -> dict[str, Any]:
    """Attach ``metrics.map_drop_ci``, ``metrics.agreement``, ``budget`` and ``speedup`` to every record (one
    atomic rewrite).

    Returns:
        What was done: the reference's name, how many intervals and agreements, and the bootstrap's seconds.
    """
    run_dir = store.run_dir
    records = store.all()
    ref = reference_of(records)
    t0 = time.perf_counter()
    n = 0
    todo = [r for r in records if ref and r.ok and r.name != ref.name
            and evaldata_path(run_dir, r.name).is_file() and not _current(r, ref, report)]
    ref_file = evaldata_path(run_dir, ref.name) if ref else None
    if ref and report.bootstrap and todo and ref_file and ref_file.is_file():
        ref_pe = PerImageEval.load(ref_file)
        n_img = len(ref_pe.image_ids)
        weights = resample_weights(n_img, report.bootstrap, report.seed)  # the same resamples for every variant
        ref_maps = resampled_maps(ref_pe, weights)
        ref_full = float(weighted_map(ref_pe, np.ones(n_img))[0])
        shared_s = (time.perf_counter() - t0) / len(todo)  # the reference's resamples, shared by all
        for r in bar(todo, desc="bootstrap intervals", unit="variant"):
            t1 = time.perf_counter()
            pe = PerImageEval.load(evaldata_path(run_dir, r.name))
            if not np.array_equal(pe.image_ids, ref_pe.image_ids):
                continue  # evaluated on other images (an older run's record): no paired interval
            drop = ref_full - float(weighted_map(pe, np.ones(n_img))[0])
            ci = interval(ref_maps, resampled_maps(pe, weights), drop, report.seed)
            r.metrics["map_drop_ci"] = ci | {"reference": ref.name, "reference_key": ref.key, "key": r.key}
            r.timings_s["bootstrap"] = round(shared_s + time.perf_counter() - t1, 2)
            n += 1
    n += _pairs(store, report, ref)
    seconds = time.perf_counter() - t0
    agreed = _agreements(store, ref)
    for r in records:
        # a twin scored on fewer images than the reference has no budget verdict: its mAP is another set's
        r.budget = {} if r.pair.get("images") else verdict(r, ref, budget)
        r.speedup = speedup(records, r) if r.ok else {}
    store.save()
    kept = sum(1 for r in records if ref and r.metrics.get("map_drop_ci") and _current(r, ref, report)) - n
    return {"reference": ref.name if ref else None, "intervals": n, "agreements": agreed, "kept": max(kept, 0),
            "bootstrap_s": seconds, "resamples": report.bootstrap}
