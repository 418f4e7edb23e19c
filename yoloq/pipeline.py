"""The run: every variant's export and accuracy pass, then one latency pass, then intervals and reports.

config -> model -> data -> export -> runtime -> evaluation -> record -> report. This module only
orchestrates: exports live in :mod:`yoloq.artifacts`, measurements in :mod:`yoloq.passes`, records in
:mod:`yoloq.records`, reports in :mod:`yoloq.report`.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

import yaml

from yoloq.artifacts import cached_artifact, ensure_artifact, variant_key, workdir_of
from yoloq.backends.base import Runtime
from yoloq.backends.batched import BatchError
from yoloq.backends.registry import get_backend
from yoloq.budget import print_budget
from yoloq.config import RunConfig, VariantConfig
from yoloq.emulate.twin import emulated_twins, twin_name
from yoloq.finalize import finalize
from yoloq.inputs import RunInputs, apply_artifact, default_out, fail_record, make_validator, new_record, prepare_inputs
from yoloq.machine_load import run_lock
from yoloq.passes import (
    accuracy_pass,
    deploy_post,
    latency_images,
    latency_pass,
    latency_settings,
    throughput_pass,
    throughput_settings,
)
from yoloq.progress import say, set_library_log
from yoloq.provenance import machine, machine_id, same_machine
from yoloq.records import Record, RecordStore, write_atomic
from yoloq.throughput import Level, level_name
from yoloq.report import write_reports

# what callers import from the run's front module (the inputs and a variant's record are made in yoloq.inputs)
__all__ = ["RunInputs", "apply_artifact", "default_out", "fail_record", "make_validator", "new_record",
           "prepare_inputs", "run", "run_variant", "run_variants"]


def run_variant(inputs: RunInputs, v: VariantConfig, key: str) -> Record:
    """Export (or reuse the export), load and evaluate one variant; every failure becomes status and reason."""
    cfg = inputs.cfg
    rec = new_record(inputs, v, key)
    runtime = None
    try:
        backend = get_backend(v.format)
        backend.check(v, inputs.source)
        t0 = time.perf_counter()
        artifact, reused = ensure_artifact(cfg, inputs.source, inputs.calibration, inputs.out_dir, v, key,
                                           make_validator(inputs))
        if reused:
            say(f"  {v.label}: reusing cached export {artifact.path.name}")
        rec.timings_s["export"] = round(time.perf_counter() - t0, 2)
        apply_artifact(rec, artifact, inputs.out_dir)
        runtime = backend.load(artifact, cfg.latency.threads, v.device)
        rec.runtime = dict(runtime.info)
        t0 = time.perf_counter()
        metrics, skipped = accuracy_pass(runtime, inputs.evalset, inputs.class_map, cfg.imgsz, cfg.eval,
                                         rec.end2end, inputs.out_dir, v.label)
        rec.timings_s["evaluate"] = round(time.perf_counter() - t0, 2)
        rec.metrics = metrics.to_dict() | {"skipped_images": skipped}
        rec.dataset["images"] = metrics.images  # what was scored: an unreadable image and its boxes are left out
    except Exception as e:  # noqa: BLE001 - one variant's failure must not end the others
        fail_record(rec, e, inputs.out_dir)
    finally:
        del runtime
        gc.collect()
    return rec


def needs_timing(records: list[Record], cfg: RunConfig, retime: bool = False) -> list[Record]:
    """The ok records to time: all of them unless they already share one pass under today's settings that no
    outside load disturbed (a variant flagged for it is timed again), or all of them where asked (``retime``)."""
    if retime:
        return list(records)
    settings = latency_settings(cfg.latency)

    def fresh(r: Record) -> bool:  # timed under today's settings, on a quiet machine
        return r.latency.get("settings") == settings and not (r.latency.get("outside_load") or {}).get("flagged")

    if cfg.latency.interleave:
        groups = {r.latency.get("group") for r in records}
        return [] if (all(fresh(r) for r in records) and len(groups) == 1 and None not in groups) else records
    return [r for r in records if not fresh(r)]


def local_target_reason(target: str) -> str:
    """Why a variant with a ``target`` is not timed by a run on one machine."""
    return (f"target '{target}': its latency is measured only on a Ray node that has that resource "
            f"(yoloq run CONFIG --ray ADDRESS); accuracy was measured here")


def awaits_target(rec: Record, v: VariantConfig) -> bool:
    """Whether ``rec`` is complete but for its target's latency: its accuracy is measured, and a run that
    reaches the target's node times it without exporting or scoring it again."""
    return bool(v.target) and rec.status == "skipped" and bool(rec.metrics)


def export_again(inputs: RunInputs, store: RecordStore, v: VariantConfig, r: Record) -> Record:
    """``r`` itself while its export is here; else the variant exported and evaluated again, the new record stored
    (what was measured on the same export stands: devices' timings for good, this machine's latency and throughput
    until a pass measures them again)."""
    if cached_artifact(workdir_of(inputs.out_dir, v), r.key) is not None:
        return r
    say(f"  {v.label}: its export is not here; exporting and evaluating it again")
    fresh = run_variant(inputs, v, r.key)
    fresh.order, fresh.reference, fresh.pair = r.order, r.reference, r.pair
    if fresh.ok and fresh.key == r.key:
        fresh.device_latency, fresh.latency, fresh.throughput = r.device_latency, r.latency, r.throughput
    store.put(fresh)
    return fresh


def time_variants(inputs: RunInputs, store: RecordStore, variants: list[VariantConfig], retime: bool = False) -> None:
    """The latency pass over every ok variant of ``variants`` (a variant whose export is gone runs again first)."""
    cfg = inputs.cfg
    by_label = {v.label: v for v in variants}
    for r in store.all():
        target = by_label[r.name].target if r.name in by_label else None
        if target and r.ok:
            r.status, r.reason = "skipped", local_target_reason(target)
        elif r.ok and r.name in by_label and not get_backend(r.format).timed_here:
            r.extra["not_timed"] = get_backend(r.format).untimed_reason()
    store.save()
    todo = needs_timing([r for r in store.all() if r.name in by_label and r.ok and "not_timed" not in r.extra], cfg,
                        retime)
    if not todo:
        return
    runtimes: dict[str, Runtime] = {}
    for r in todo:
        v = by_label[r.name]
        r = export_again(inputs, store, v, r)
        if not r.ok:
            continue
        try:
            artifact = cached_artifact(workdir_of(inputs.out_dir, v), r.key)
            runtimes[r.name] = get_backend(v.format).load(artifact, cfg.latency.threads, v.device)
        except Exception as e:  # noqa: BLE001 - one variant's failure must not end the others
            fail_record(r, e, inputs.out_dir, "latency: ")
    mode = "side by side, round-robin blocks of " + str(cfg.latency.block) if cfg.latency.interleave else "one by one"
    say(f"latency: {len(runtimes)} variants, {mode}")
    posts = {r.name: deploy_post(cfg.eval, cfg.latency, (store.get(r.name) or r).end2end) for r in todo}
    try:
        lat = latency_pass(runtimes, {r.name: r.key for r in todo}, latency_images(inputs.evalset, cfg.latency.images),
                           cfg.imgsz, cfg.latency, posts)
    except Exception as e:  # noqa: BLE001 - a runtime failed mid-way: nothing paired can be kept
        lat = {}
        for r in todo:
            if r.name in runtimes:
                fail_record(r, e, inputs.out_dir, "latency: ")
    for r in todo:
        r = store.get(r.name) or r
        if r.name in lat:
            r.latency = lat[r.name]
            r.timings_s["latency"] = round(lat[r.name]["seconds"], 2)  # this variant's timed seconds
            say(f"  {r.name}: p50 {r.p50:.1f} ms  p90 {r.latency['p90_ms']:.1f} ms  ({r.latency['runs']} runs)")
    del runtimes
    gc.collect()
    store.save()


def needs_streams(records: list[Record], cfg: RunConfig) -> list[Record]:
    """The timed records whose throughput to measure: none when they already share one pass under today's
    settings that no outside load disturbed, else all of them (side by side again)."""
    settings = throughput_settings(cfg.streams, cfg.latency)
    measured = [r for r in records if "error" not in r.throughput]  # one that could not load is not tried again
    groups = {r.throughput.get("group") for r in measured}  # under the same settings on every resume
    fresh = all(r.throughput.get("settings") == settings and not (r.throughput.get("outside_load") or {}).get(
        "flagged") for r in records)
    return [] if (fresh and len(groups) <= 1 and None not in groups) else records


def stream_variants(inputs: RunInputs, store: RecordStore, variants: list[VariantConfig]) -> None:
    """The throughput pass over every variant the latency pass timed: 1, 2, 4 ... streams in flight, each runtime's
    own concurrency, side by side. A variant that cannot load for it keeps its other figures and says why."""
    cfg = inputs.cfg
    by_label = {v.label: v for v in variants}
    timed = [r for r in store.all() if r.name in by_label and r.ok and r.latency.get("p50_ms")]
    todo = needs_streams(timed, cfg) if cfg.streams.levels else []
    if not todo:
        return
    import torch

    runtimes: dict[str, dict[Level, list[Runtime]]] = {}
    refused: dict[str, dict[str, str]] = {}
    todo = [r for r in (export_again(inputs, store, by_label[r.name], r) for r in todo) if r.ok]
    for r in todo:
        v = by_label[r.name]
        try:
            artifact = cached_artifact(workdir_of(inputs.out_dir, v), r.key)
            if artifact is None:
                raise FileNotFoundError(f"its export is not in {workdir_of(inputs.out_dir, v)}")
            backend = get_backend(v.format)
            runtimes[r.name] = {n: backend.load_streams(artifact, n, cfg.latency.threads, v.device)
                                for n in cfg.streams.levels}
            for b in cfg.streams.batches:
                try:
                    runtimes[r.name][(1, b)] = [backend.load_batched(artifact, b, cfg.imgsz, cfg.latency.threads,
                                                                     v.device)]
                except BatchError as e:  # the stream counts stand; the record says why this batch is not
                    refused.setdefault(r.name, {})[str(b)] = str(e)
                    say(f"  {r.name}: no batch {b}: {e}")
        except Exception as e:  # noqa: BLE001 - its accuracy and latency stand; the curve says why it is missing
            runtimes.pop(r.name, None)
            r.throughput = {"error": f"{type(e).__name__}: {e}", "settings": throughput_settings(cfg.streams,
                                                                                                 cfg.latency)}
    levels = ", ".join(map(str, cfg.streams.levels))
    batches = f" and batches of {', '.join(map(str, cfg.streams.batches))}" if cfg.streams.batches else ""
    say(f"throughput: {len(runtimes)} variants with {levels} streams in flight{batches}, side by side")
    recs = {r.name: r for r in todo}
    posts = {n: deploy_post(cfg.eval, cfg.latency, recs[n].end2end) for n in runtimes}
    try:
        curves = throughput_pass(runtimes, {r.name: r.key for r in todo}, latency_images(inputs.evalset,
                                 cfg.latency.images), cfg.imgsz, cfg.streams, cfg.latency, posts)
    except Exception as e:  # noqa: BLE001 - a runtime failed mid-way: no curve of this pass is kept
        curves = {}
        for n in runtimes:  # no settings kept: the next run measures them again
            recs[n].throughput = {"error": f"{type(e).__name__}: {e}"}
    finally:
        torch.set_num_threads(cfg.latency.threads)  # split between streams while they ran
        del runtimes
        gc.collect()
    for n, curve in curves.items():
        recs[n].throughput = curve | ({"batches_refused": refused[n]} if n in refused else {})
        say(f"  {n}: " + "  ".join(f"{level_name((lv['streams'], lv.get('batch', 1)))}: {lv['fps']:.1f} FPS"
                                   for lv in curve["levels"]))
    store.save()


def describe(rec: Record) -> str:
    """One line: mAP, p50 and size, or the status and reason."""
    if not rec.ok:
        return f"{rec.status.upper()}: {rec.reason}"
    lat = f"p50 {rec.p50:.1f} ms  " if rec.p50 else ""
    return f"mAP50-95 {rec.map:.4f}  {lat}{rec.size_mb:.1f} MB"


def _set_aside_other_machines(store: RecordStore) -> None:
    """Records measured on another machine are never reused or reported as this one's: they move to
    ``records.<machine>.jsonl`` beside the run's records (nothing is lost)."""
    here = machine()
    other = [r for r in store.all() if not same_machine(r.machine, here)]
    if not other:
        return
    by_machine: dict[str, list[Record]] = {}
    for r in other:
        by_machine.setdefault(machine_id(r.machine), []).append(r)
    for mid, recs in by_machine.items():
        dest = store.run_dir / f"records.{mid}.jsonl"
        say(f"yoloq: {len(recs)} records in {store.run_dir} were measured on another machine "
            f"({recs[0].machine.get('cpu')}); set aside in {dest.name}, measuring anew here")
        keep = dest.read_text() if dest.is_file() else ""
        write_atomic(dest, keep + "".join(json.dumps(r.to_dict()) + "\n" for r in recs))
    store.remove([r.name for r in other])


def run(cfg: RunConfig, out_dir: Path | None = None, wait: bool = False, retime: bool = False) -> int:
    """Run every variant of ``cfg`` (resolved) into ``out_dir`` (default: the config's output, per machine).

    Variants already recorded on this machine with the same key are kept, so an interrupted run resumes. One
    run per folder at a time: a second one is refused in one line, or waits for the first (``wait``).
    ``retime``: every variant is timed again side by side, though its latency is recorded.

    Returns:
        0 when every variant is ok or skipped, 1 when any failed.

    Raises:
        YoloqError: When the run cannot start (model, data, calibration or output folder).
    """
    import torch

    torch.set_num_threads(cfg.latency.threads)  # the shared NMS runs in torch: same threads for every variant
    out_dir = Path(out_dir) if out_dir else default_out(cfg)
    with run_lock(out_dir, wait):
        return _run(cfg, out_dir, retime)


def _run(cfg: RunConfig, out_dir: Path, retime: bool = False) -> int:
    inputs = prepare_inputs(cfg, out_dir)
    write_atomic(out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    cal = inputs.calibration
    say(f"yoloq: {len(cfg.variants)} variants of {inputs.source.name} at {cfg.imgsz} on "
        f"{inputs.evalset.name}/{inputs.evalset.split} ({len(inputs.evalset.samples)} images); calibration: "
        f"{len(cal.images)} of {cal.pool} images from {', '.join(cal.sources)}; machine {machine()['id']}; "
        f"output {out_dir}")
    return run_variants(cfg, inputs, list(cfg.variants), retime=retime)


def run_variants(cfg: RunConfig, inputs: RunInputs, variants: list[VariantConfig],
                 pairs: dict[str, dict[str, Any]] | None = None, retime: bool = False) -> int:
    """Run ``variants`` (reusing finished ones), time them, then intervals, budget and reports for the folder.

    Args:
        pairs: Per variant name, the record's ``pair`` (e.g. a QAT variant and its PTQ counterpart).
        retime: Time every variant again side by side, though its latency is recorded.

    Returns:
        0 when every variant of ``cfg`` is ok or skipped, 1 when any failed.
    """
    out_dir = inputs.out_dir
    set_library_log(out_dir / "logs" / "libraries.log")
    store = RecordStore(out_dir)
    _set_aside_other_machines(store)  # from here on, every record in the store is this machine's
    for i, v, key, meta in plan(cfg, inputs, store, variants, pairs):
        say(f"[{i}/{len(variants)}] {v.label}")
        rec = run_variant(inputs, v, key)
        rec.order, rec.reference, rec.pair = meta["order"], meta["reference"], meta["pair"]
        store.put(rec)
        say(f"  {v.label}: {describe(rec)}")
    emulated_twins(cfg, inputs, store, variants)
    time_variants(inputs, store, variants, retime)
    stream_variants(inputs, store, variants)
    code = finish_run(cfg, store)
    set_library_log(None)
    return code


def plan(cfg: RunConfig, inputs: RunInputs, store: RecordStore, variants: list[VariantConfig],
         pairs: dict[str, dict[str, Any]] | None = None) -> list[tuple[int, VariantConfig, str, dict[str, Any]]]:
    """The variants to run, as ``(order, variant, key, meta)``; those already recorded ok with their key are kept
    (their order, reference and pair brought up to date) and left out."""
    reference = cfg.reference_label
    todo = []
    for i, v in enumerate(variants, 1):
        key = variant_key(cfg, inputs.source, inputs.calibration, v)
        prev = store.get(v.label)
        meta = {"order": i, "reference": v.label == reference, "pair": (pairs or {}).get(v.label, {})}
        if prev and prev.key == key and (prev.ok or awaits_target(prev, v)):
            say(f"[{i}/{len(variants)}] {v.label}: already recorded, kept")
            if (prev.order, prev.reference, prev.pair) != tuple(meta.values()):
                prev.order, prev.reference, prev.pair = meta["order"], meta["reference"], meta["pair"]
                store.save()
            continue
        todo.append((i, v, key, meta))
    return todo


def finish_run(cfg: RunConfig, store: RecordStore) -> int:
    """Intervals, budget and reports for the run folder; 1 when any variant of ``cfg`` failed, else 0."""
    labels = {v.label for v in cfg.variants} | {twin_name(cfg, v) for v in cfg.variants}
    failed = any(r.status == "failed" for r in store.all() if r.name in labels)
    done = finalize(store, cfg.budget, cfg.report)
    print(write_reports(store))
    if done["intervals"]:
        say(f"bootstrap: {done['intervals']} paired intervals x {done['resamples']} resamples in "
            f"{done['bootstrap_s']:.1f}s")
    if cfg.budget.active:
        print_budget(store.all())
    say(f"\nrecords: {store.path}  report: {store.run_dir / 'report.html'}")
    return 1 if failed else 0
