"""The measurement passes, kept apart: accuracy (every evaluation image, pycocotools), latency (preloaded images,
the harness owns the clock, variants timed side by side or alone) and throughput (several streams in flight)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from yoloq.accuracy import score
from yoloq.agreement import StoredDetections
from yoloq.backends.base import Runtime
from yoloq.config import EvalConfig, LatencyConfig, StreamsConfig
from yoloq.data.types import DatasetSplit
from yoloq.errors import DataError
from yoloq.evaluate import CocoEvaluator, CocoMetrics
from yoloq.latency import LatencyStats, measure, measure_interleaved
from yoloq.machine_load import OutsideLoad
from yoloq.postprocess import postprocess
from yoloq.preprocess import read_image
from yoloq.throughput import Level, level_name, measure_streams


def evaldata_path(run_dir: Path, name: str) -> Path:
    """Where a variant's per-image evaluation (for the bootstrap) is kept."""
    return run_dir / "evaldata" / f"{name}.npz"


def detections_path(run_dir: Path, name: str) -> Path:
    """Where a variant's detections on the evaluation images are kept (for its agreement with the reference)."""
    return run_dir / "evaldata" / f"{name}.detections.npz"


def accuracy_pass(runtime: Runtime, evalset: DatasetSplit, class_map: tuple[int, ...], imgsz: int,
                  cfg: EvalConfig, end2end: bool, run_dir: Path, label: str) -> tuple[CocoMetrics, list[str]]:
    """Predict every evaluation image (batch 1) and score the detections with pycocotools.

    The per-image matches and the detections are kept in ``evaldata/`` for the report's bootstrap
    intervals and agreement with the reference.

    Returns:
        The metrics and the names of images that could not be read (skipped, not scored).
    """
    evaluator, skipped = score(runtime.predict, evalset, class_map, imgsz, cfg, end2end, label=f"evaluate {label}",
                               in_flight=int(getattr(runtime, "in_flight", 1)))
    return finish_accuracy(evaluator, run_dir, label), skipped


def finish_accuracy(evaluator: CocoEvaluator, run_dir: Path, label: str) -> CocoMetrics:
    """One ``COCOeval`` over every processed image; the per-image matches (bootstrap) and the detections
    (agreement) go to ``evaldata/``."""
    metrics = evaluator.evaluate()
    per_image = evaluator.per_image()
    if per_image is not None:
        per_image.save(evaldata_path(run_dir, label))
    StoredDetections.from_results(evaluator.image_ids, evaluator.results).save(detections_path(run_dir, label))
    return metrics


def latency_images(evalset: DatasetSplit, n: int) -> list[np.ndarray]:
    """The first ``n`` readable evaluation images, decoded once before any timing."""
    out = []
    for s in evalset.samples:
        if len(out) >= n:
            break
        try:
            out.append(read_image(s.path))
        except DataError:
            continue
    return out


def deploy_post(eval_cfg: EvalConfig, latency: LatencyConfig, end2end: bool) -> Callable[..., Any]:
    """The timed postprocess: the deployment score threshold, single label (as ``yolo predict``)."""
    deploy = EvalConfig(conf=latency.conf, iou=eval_cfg.iou, max_det=eval_cfg.max_det, multi_label=False)
    return lambda raw, lbs: postprocess(raw, lbs, deploy, end2end)


def latency_settings(cfg: LatencyConfig) -> dict[str, Any]:
    """The settings a latency figure depends on (a record timed under others is timed again)."""
    return dataclasses.asdict(cfg)


def group_key(keys: list[tuple[str, str]], cfg: LatencyConfig) -> str:
    """The key of one side-by-side pass: its variants (name, key) and the harness settings."""
    return hashlib.sha256(json.dumps([sorted(keys), latency_settings(cfg)]).encode()).hexdigest()[:16]


def latency_pass(runtimes: dict[str, Runtime], keys: dict[str, str], images: list[np.ndarray], imgsz: int,
                 cfg: LatencyConfig, posts: dict[str, Callable[..., Any]]) -> dict[str, dict[str, Any]]:
    """Time ``runtimes``: side by side in round-robin blocks (``cfg.interleave``), else one after another.

    ``posts`` gives each variant's timed postprocess (NMS, or none after an NMS-free branch).

    Returns:
        Per variant name, the latency record field (stats, deployment threshold, mode, pass key,
        ``pass_seconds``: the wall time of the pass that timed it, warm-up included, and ``outside_load``: the
        share of the machine's CPU other processes took meanwhile, from the OS).
    """
    extra = {"conf": cfg.conf, "multi_label": False, "settings": latency_settings(cfg)}
    if not runtimes:
        return {}
    if cfg.interleave:
        gkey = group_key([(n, keys[n]) for n in runtimes], cfg)
        t0 = time.perf_counter()
        with OutsideLoad() as load:
            stats = measure_interleaved({n: (rt, posts[n]) for n, rt in runtimes.items()}, images, imgsz, cfg,
                                        progress="latency side by side")
        wall = round(time.perf_counter() - t0, 1)
        return {n: s.to_dict() | extra | {"mode": "interleaved", "group": gkey, "group_size": len(stats),
                                          "pass_seconds": wall, "outside_load": load.result}
                for n, s in stats.items()}
    out: dict[str, dict[str, Any]] = {}
    for n, rt in runtimes.items():
        t0 = time.perf_counter()
        with OutsideLoad() as load:
            s: LatencyStats = measure(rt, images, imgsz, posts[n], cfg, progress=f"latency {n}")
        out[n] = s.to_dict() | extra | {"mode": "alone", "pass_seconds": round(time.perf_counter() - t0, 1),
                                        "outside_load": load.result}
    return out


def throughput_settings(streams: StreamsConfig, latency: LatencyConfig) -> dict[str, Any]:
    """The settings a throughput curve depends on: the pass's own and the latency harness's it shares (no batch
    levels: as before batches existed, so curves measured then stand)."""
    out = dataclasses.asdict(streams) | {"levels": list(streams.levels), "batches": list(streams.batches),
                                         "threads": latency.threads, "images": latency.images,
                                         "conf": latency.conf}  # as the record stores it
    if not streams.batches:
        out.pop("batches")
    return out


def throughput_pass(runtimes: dict[str, dict[Level, list[Runtime]]], keys: dict[str, str], images: list[np.ndarray],
                    imgsz: int, streams: StreamsConfig, latency: LatencyConfig,
                    posts: dict[str, Callable[..., Any]]) -> dict[str, dict[str, Any]]:
    """Frames per second of ``runtimes`` (per variant, per level: a stream count with one runtime per stream, or
    (1, batch) with one runtime taking ``batch`` frames per inference), side by side.

    Returns:
        Per variant name, the throughput record field: ``levels`` (the curve: streams, batch, fps, per-frame
        p50/p90), ``concurrency`` (per level, "N" or "batch B", how the runtimes shared the machine), the settings,
        the pass's key,
        wall time and the share of the CPU other processes took meanwhile.
    """
    if not runtimes:
        return {}
    settings = throughput_settings(streams, latency)
    gkey = hashlib.sha256(json.dumps([sorted(keys.items()), settings]).encode()).hexdigest()[:16]
    t0 = time.perf_counter()
    with OutsideLoad() as load:
        curves = measure_streams({n: (by, posts[n]) for n, by in runtimes.items()}, images, imgsz, streams,
                                 progress="throughput side by side")
    wall = round(time.perf_counter() - t0, 1)
    return {n: {"levels": [lv.to_dict() for lv in curves[n]], "threads": latency.threads,
                "concurrency": {level_name(k): str(rts[0].info.get("concurrency", ""))
                                for k, rts in runtimes[n].items()},
                "settings": settings, "group": gkey, "pass_seconds": wall, "outside_load": load.result}
            for n in runtimes}
