"""The loop over variants: export, load, accuracy pass, latency pass, one record each."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from yoloq.accuracy import score
from yoloq.backends.base import Artifact, ExportContext, Runtime
from yoloq.backends.registry import get_backend
from yoloq.config import EvalConfig, RunConfig, VariantConfig
from yoloq.data import DatasetSplit, load_split
from yoloq.data.calibration import CalibrationSet, build_calibration
from yoloq.data.holdout import holdout_split
from yoloq.errors import BackendUnavailable, DataError, YoloqError
from yoloq.evaluate import CocoMetrics
from yoloq.finalize import evaldata_path, finalize
from yoloq.latency import measure, measure_interleaved
from yoloq.models import SourceModel, load_source
from yoloq.paths import display_path
from yoloq.postprocess import postprocess
from yoloq.preprocess import read_image
from yoloq.provenance import machine, versions
from yoloq.records import Record, load_records, save_record, write_atomic
from yoloq.report import write_reports


@dataclass(frozen=True)
class RunInputs:
    """What every variant of a run shares: config, source model, evaluation split, calibration set."""

    cfg: RunConfig
    source: SourceModel
    evalset: DatasetSplit
    class_map: tuple[int, ...]
    calibration: CalibrationSet
    out_dir: Path


def prepare_inputs(cfg: RunConfig, out_dir: Path) -> RunInputs:
    """Resolve the model and data and check the output folder before any variant runs.

    Raises:
        YoloqError: Model, data, calibration overlap or output folder problems (the run cannot start).
    """
    base = Path(cfg.base_dir)
    source = load_source(cfg.model, base)
    evalset = load_split(cfg.data, base)
    if not evalset.samples:
        raise DataError(f"dataset '{evalset.name}' split '{evalset.split}' has no readable images")
    class_map = evalset.category_map(source.names)
    calibration = build_calibration(cfg.calibration, evalset, base)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise YoloqError(f"output folder {out_dir} cannot be written ({e.strerror}); choose another with --out") \
            from None
    return RunInputs(cfg, source, evalset, class_map, calibration, out_dir)


def variant_key(inputs: RunInputs, v: VariantConfig) -> str:
    """A hash of everything that determines one variant's result (reuse only when it matches)."""
    cfg = inputs.cfg.to_dict()
    for k in ("variants", "output", "reference", "budget", "report", "qat"):
        cfg.pop(k, None)
    blob = {"cfg": cfg, "variant": {"format": v.format, "precision": v.precision, "device": v.device,
                                    "options": dict(v.options)},
            "model": inputs.source.sha256, "calibration": inputs.calibration.sha256, "versions": versions()}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_artifact(workdir: Path, key: str) -> Artifact | None:
    """The artifact exported earlier for this variant key, if its manifest and files are intact."""
    manifest = workdir / "artifact.json"
    try:
        m = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    path = Path(m.get("path", ""))
    path = path if path.is_absolute() else workdir / path
    if m.get("key") != key or not path.exists():
        return None
    return Artifact(path, m["format"], m["precision"], m.get("info", {}))


def remember_artifact(workdir: Path, key: str, artifact: Artifact) -> None:
    """Write the variant's artifact manifest (atomically, after the export has finished)."""
    ref = os.path.relpath(Path(artifact.path).resolve(), workdir.resolve())
    write_atomic(workdir / "artifact.json", json.dumps({"key": key, "path": ref, "format": artifact.format,
                                                        "precision": artifact.precision,
                                                        "info": dict(artifact.info)}, default=str))


def accuracy_pass(runtime: Runtime, inputs: RunInputs, label: str) -> tuple[CocoMetrics, list[str]]:
    """Predict every evaluation image (batch 1) and score the detections with pycocotools.

    The per-image matches are kept in ``evaldata/`` for the report's bootstrap intervals.

    Returns:
        The metrics and the names of images that could not be read (skipped, not scored).
    """
    cfg = inputs.cfg
    evaluator, skipped = score(runtime.predict, inputs.evalset, inputs.class_map, cfg.imgsz, cfg.eval,
                               inputs.source.end2end, label=f"  evaluate {label}")
    metrics = evaluator.evaluate()
    per_image = evaluator.per_image()
    if per_image is not None:
        per_image.save(evaldata_path(inputs.out_dir, label))
    return metrics, skipped


def _latency_images(inputs: RunInputs) -> list[Any]:
    out = []
    for s in inputs.evalset.samples:
        if len(out) >= inputs.cfg.latency.images:
            break
        try:
            out.append(read_image(s.path))
        except DataError:
            continue
    return out


def _base_record(inputs: RunInputs, v: VariantConfig, key: str) -> Record:
    cfg, ev = inputs.cfg, inputs.evalset
    return Record(
        name=v.label, format=v.format, precision=v.precision, device=v.device, status="ok",
        model={"name": inputs.source.name, "file": display_path(inputs.source.path), "kind": inputs.source.kind,
               "sha256": inputs.source.sha256},
        options=dict(v.options), imgsz=cfg.imgsz,
        calibration=inputs.calibration.describe(),
        dataset={"name": ev.name, "split": ev.split, "images": len(ev.samples),
                 "root": display_path(ev.root)},
        eval_settings={"conf": cfg.eval.conf, "iou": cfg.eval.iou, "max_det": cfg.eval.max_det,
                       "multi_label": cfg.eval.multi_label, "batch": 1},
        config_hash=cfg.hash(), key=key, versions=versions(), machine=machine(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def run_variant(inputs: RunInputs, v: VariantConfig, key: str) -> Record:
    """Export, load, evaluate and time one variant; every failure becomes the record's status and reason."""
    cfg = inputs.cfg
    rec = _base_record(inputs, v, key)
    timings: dict[str, float] = {}
    runtime = None
    try:
        backend = get_backend(v.format)
        backend.check(v, inputs.source)
        t0 = time.perf_counter()
        artifact = cached_artifact(inputs.out_dir / "artifacts" / v.label, key)
        if artifact is None:
            ctx = ExportContext(inputs.source, v, cfg.imgsz, inputs.calibration,
                                inputs.out_dir / "artifacts" / v.label, eval_cfg=cfg.eval,
                                holdout=lambda n, used: holdout_split(cfg.calibration, used, inputs.source.names, n,
                                                                      Path(cfg.base_dir)),
                                threads=cfg.latency.threads)
            artifact = backend.export(ctx)
            remember_artifact(inputs.out_dir / "artifacts" / v.label, key, artifact)
        else:
            print(f"  {v.label}: reusing cached export {artifact.path.name}", file=sys.stderr)
        timings["export"] = time.perf_counter() - t0
        rec.artifact = _artifact_ref(Path(artifact.path), inputs.out_dir)
        rec.size_mb = artifact.size_bytes / 1e6
        rec.artifact_info = dict(artifact.info)
        runtime = backend.load(artifact, cfg.latency.threads, v.device)
        rec.runtime = dict(runtime.info)
        t0 = time.perf_counter()
        metrics, skipped = accuracy_pass(runtime, inputs, v.label)
        timings["evaluate"] = time.perf_counter() - t0
        rec.metrics = metrics.to_dict() | {"skipped_images": skipped}
        if not cfg.latency.interleave:  # otherwise timed side by side with the others after the loop
            t0 = time.perf_counter()
            lat = measure(runtime, _latency_images(inputs), cfg.imgsz, _deploy_post(inputs), cfg.latency,
                          progress=f"  latency {v.label}")
            timings["latency"] = time.perf_counter() - t0
            rec.latency = lat.to_dict() | {"conf": cfg.latency.conf, "multi_label": False, "mode": "alone"}
    except BackendUnavailable as e:
        rec.status, rec.reason = "skipped", str(e)
    except Exception as e:  # noqa: BLE001 - one variant's failure must not end the others
        rec.status, rec.reason = "failed", f"{type(e).__name__}: {e}".splitlines()[0][:500]
        log = inputs.out_dir / "logs" / f"{v.label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
    finally:
        del runtime
        gc.collect()
    rec.timings_s = {k: round(t, 2) for k, t in timings.items()}
    return rec


def _deploy_post(inputs: RunInputs) -> Callable[..., Any]:
    """The timed postprocess: the deployment score threshold, single label (as ``yolo predict``)."""
    cfg = inputs.cfg
    deploy = EvalConfig(conf=cfg.latency.conf, iou=cfg.eval.iou, max_det=cfg.eval.max_det, multi_label=False)
    return lambda raw, lbs: postprocess(raw, lbs, deploy, inputs.source.end2end)


def side_by_side(inputs: RunInputs, variants: list[VariantConfig]) -> None:
    """Time every ok variant of ``variants`` together (round-robin), into their records.

    Skipped when all of them already hold latency from one common pass (a cached re-run, or a run
    of fewer variants than that pass timed, measures nothing). A variant whose export is gone (a
    fresh clone holds records, not artifacts) is exported and evaluated again first. A variant
    that cannot be loaded here is recorded as skipped (backend missing) or failed; the others are
    still timed.
    """
    cfg = inputs.cfg
    path = inputs.out_dir / "records.jsonl"
    rows = load_records(path)
    by_label = {v.label: v for v in variants}
    group = [r for r in rows if r.get("name") in by_label and r.get("status") == "ok"]
    passes = {(r.get("latency") or {}).get("group") for r in group}
    if not group or (len(passes) == 1 and None not in passes):
        return
    gkey = hashlib.sha256(json.dumps([sorted((r["name"], r.get("key")) for r in group),
                                      dataclasses.asdict(cfg.latency)]).encode()).hexdigest()[:16]
    print(f"latency: {len(group)} variants side by side, round-robin blocks of {cfg.latency.block}", file=sys.stderr)
    runtimes: dict[str, Any] = {}
    post = _deploy_post(inputs)
    for r in group:
        v = by_label[r["name"]]
        workdir = inputs.out_dir / "artifacts" / v.label
        try:
            artifact = cached_artifact(workdir, r.get("key", ""))
            if artifact is None:
                print(f"  {v.label}: its export is not here; exporting and evaluating it again", file=sys.stderr)
                fresh = run_variant(inputs, v, r.get("key", "")).to_dict()
                r.clear()
                r.update(fresh)
                if r["status"] != "ok":
                    continue
                artifact = cached_artifact(workdir, r.get("key", ""))
            runtimes[v.label] = (get_backend(v.format).load(artifact, cfg.latency.threads, v.device), post)
        except BackendUnavailable as e:
            r["status"], r["reason"] = "skipped", str(e)
        except Exception as e:  # noqa: BLE001 - one variant's failure must not end the others
            r["status"], r["reason"] = "failed", f"latency: {type(e).__name__}: {e}".splitlines()[0][:500]
    t0 = time.perf_counter()
    try:
        stats = measure_interleaved(runtimes, _latency_images(inputs), cfg.imgsz, cfg.latency,
                                    progress="  latency side by side")
    except Exception as e:  # noqa: BLE001 - a runtime failed mid-way: nothing paired can be kept
        stats = {}
        for r in group:
            if r["name"] in runtimes:
                r["status"], r["reason"] = "failed", f"latency: {type(e).__name__}: {e}".splitlines()[0][:500]
    seconds = time.perf_counter() - t0
    for r in group:
        if r["name"] in stats:
            r["latency"] = stats[r["name"]].to_dict() | {"conf": cfg.latency.conf, "multi_label": False,
                                                         "mode": "interleaved", "group": gkey,
                                                         "group_size": len(stats)}
            r.setdefault("timings_s", {})["latency"] = round(seconds / max(len(stats), 1), 2)
    del runtimes
    gc.collect()
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    for r in group:
        if r["name"] in stats:
            lat = r["latency"]
            print(f"  {r['name']}: p50 {lat['p50_ms']:.1f} ms  p90 {lat['p90_ms']:.1f} ms  ({lat['runs']} runs)",
                  file=sys.stderr)


def _artifact_ref(path: Path, out_dir: Path) -> str:
    """The artifact's path relative to the run folder when inside it (records stay valid when moved)."""
    try:
        return path.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        return display_path(path)


def _describe(rec: Record) -> str:
    if rec.status != "ok":
        return f"{rec.status.upper()}: {rec.reason}"
    lat = f"p50 {rec.latency['p50_ms']:.1f} ms  p90 {rec.latency['p90_ms']:.1f} ms  " if rec.latency else ""
    return f"mAP50-95 {rec.metrics['map50_95']:.4f}  {lat}{rec.size_mb:.1f} MB"


def run(cfg: RunConfig, out_dir: Path | None = None) -> int:
    """Run every variant of ``cfg`` into ``out_dir`` (default: the config's ``output``).

    Variants already recorded with the same key are kept, so an interrupted run resumes.

    Returns:
        0 when every variant is ok or skipped, 1 when any failed.

    Raises:
        YoloqError: When the run cannot start (model, data, calibration or output folder).
    """
    import torch

    torch.set_num_threads(cfg.latency.threads)  # the shared NMS runs in torch: same threads for every variant
    out_dir = Path(out_dir or cfg.output)
    inputs = prepare_inputs(cfg, out_dir)
    write_atomic(out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    print(f"yoloq: {len(cfg.variants)} variants of {inputs.source.name} at {cfg.imgsz} on "
          f"{inputs.evalset.name}/{inputs.evalset.split} ({len(inputs.evalset.samples)} images); calibration: "
          f"{len(inputs.calibration.images)} images from {', '.join(inputs.calibration.sources)}", file=sys.stderr)
    return run_variants(cfg, inputs, list(cfg.variants))


def run_variants(cfg: RunConfig, inputs: RunInputs, variants: list[VariantConfig]) -> int:
    """Run ``variants`` (reusing finished ones), then intervals, budget and reports for the whole folder.

    Returns:
        0 when every variant of ``cfg`` is ok or skipped, 1 when any failed.
    """
    out_dir = inputs.out_dir
    records_path = out_dir / "records.jsonl"
    done = {r.get("name"): r for r in load_records(records_path)}
    for i, v in enumerate(variants, 1):
        key = variant_key(inputs, v)
        prev = done.get(v.label)
        if prev and prev.get("key") == key and prev.get("status") == "ok":
            print(f"[{i}/{len(variants)}] {v.label}: already recorded, kept", file=sys.stderr)
            continue
        print(f"[{i}/{len(variants)}] {v.label}", file=sys.stderr)
        rec = run_variant(inputs, v, key)
        save_record(records_path, rec)
        print(f"  {v.label}: {_describe(rec)}", file=sys.stderr)
    if cfg.latency.interleave:
        side_by_side(inputs, variants)
    failed = any(r.get("status") == "failed" for r in load_records(records_path)
                 if r.get("name") in {v.label for v in cfg.variants})
    done_info = finalize(out_dir, cfg.reference_label, cfg.budget, cfg.report)
    table = write_reports(out_dir, cfg.reference_label)
    print(table)
    if done_info["intervals"]:
        print(f"bootstrap: {done_info['intervals']} paired intervals x {done_info['resamples']} resamples in "
              f"{done_info['bootstrap_s']:.1f}s", file=sys.stderr)
    if cfg.budget.active:
        print_budget(load_records(records_path))
    print(f"\nrecords: {out_dir / 'records.jsonl'}  report: {out_dir / 'report.html'}", file=sys.stderr)
    return 1 if failed else 0


def print_budget(records: list[dict[str, Any]]) -> bool:
    """Print PASS/FAIL per judged variant; return whether every judged variant passed."""
    ok = True
    for r in records:
        v = r.get("budget") or {}
        if v.get("pass") is None:
            continue
        ok &= bool(v["pass"])
        detail = v.get("why") or f"keeps {v['retention']:.1%}, drop {v['drop']:+.4f}"
        print(f"budget {'PASS' if v['pass'] else 'FAIL'}  {r['name']}: {detail} (rule: {v['rule']})")
    return ok
