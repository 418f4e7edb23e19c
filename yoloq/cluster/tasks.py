"""The work a cluster node does: export one variant, score one shard of the evaluation images, time the
variants of one target side by side.

Plain functions: the driver wraps them with ``ray.remote``. They land what the driver shipped and
then call the code a local run calls (``ensure_artifact``, ``score``, ``latency_pass``). A failure
comes back as data (status, reason, traceback), so only a lost node or process is a Ray error (and
retried by Ray).
"""

from __future__ import annotations

import platform
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.accuracy import score
from yoloq.artifacts import ensure_artifact
from yoloq.backends.base import Artifact, Runtime
from yoloq.backends.registry import get_backend
from yoloq.cluster.ship import Files, Shard, Shipment, pack, unpack
from yoloq.config import VariantConfig
from yoloq.data.types import DatasetSplit
from yoloq.errors import BackendUnavailable
from yoloq.passes import deploy_post, latency_pass
from yoloq.pipeline import RunInputs, make_validator
from yoloq.provenance import machine, versions

_landed: dict[str, tuple[Any, ...]] = {}  # per worker process: run -> landed shipment
_loaded: dict[str, Any] = {}  # per worker process: the last loaded runtime, by variant key


def node_facts() -> dict[str, Any]:
    """This node: its Ray id and address, host name, machine fingerprint and library versions."""
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
            "host": platform.node(), "machine": machine(), "versions": versions()}


def _failure(e: BaseException, facts: dict[str, Any]) -> dict[str, Any]:
    if isinstance(e, BackendUnavailable):
        return {"status": "skipped", "reason": str(e), "node": facts}
    return {"status": "failed", "reason": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(),
            "node": facts}


def _threads(shipment: Shipment) -> int:
    import torch

    torch.set_num_threads(shipment.cfg.latency.threads)  # as a local run: the shared NMS runs in torch
    return shipment.cfg.latency.threads


def _inputs(shipment: Shipment) -> RunInputs:
    if shipment.run not in _landed:
        _landed[shipment.run] = shipment.land()
    source, pool, calibration, root = _landed[shipment.run]
    nothing = DatasetSplit("none", "none", root, (), source.names, tuple(range(len(source.names))))
    return RunInputs(shipment.cfg, source, nothing, (), pool, calibration, root)


def export(shipment: Shipment, v: VariantConfig, key: str) -> dict[str, Any]:
    """Export (or reuse this node's export of) one variant; its files come back as bytes.

    Returns:
        ``status`` ok with ``files`` (None: the artifact is the source model itself), format,
        precision, info and seconds; or ``status`` skipped/failed with the reason.
    """
    facts = node_facts()
    t0 = time.perf_counter()
    try:
        _threads(shipment)
        inputs = _inputs(shipment)
        get_backend(v.format).check(v, inputs.source)
        artifact, reused = ensure_artifact(shipment.cfg, inputs.source, inputs.calibration, inputs.out_dir, v, key,
                                           make_validator(inputs))
        is_source = Path(artifact.path).resolve() == Path(inputs.source.path).resolve()
        return {"status": "ok", "files": None if is_source else pack(Path(artifact.path)),
                "format": artifact.format, "precision": artifact.precision, "info": dict(artifact.info),
                "seconds": round(time.perf_counter() - t0, 2), "reused": reused, "node": facts}
    except Exception as e:  # noqa: BLE001 - the driver records it; the other variants go on
        return _failure(e, facts)


def _artifact(shipment: Shipment, v: VariantConfig, key: str, art: dict[str, Any]) -> Artifact:
    """The shipped export written on this node (the landed source model when it is the artifact)."""
    inputs = _inputs(shipment)
    files: Files | None = art["files"]
    path = inputs.source.path if files is None else unpack(files, inputs.out_dir / "received" / f"{v.label}-{key}")
    return Artifact(path, art["format"], art["precision"], art["info"])


def _runtime(shipment: Shipment, v: VariantConfig, key: str, art: dict[str, Any]) -> Runtime:
    if key not in _loaded:
        _loaded.clear()  # one model loaded per worker process
        _loaded[key] = get_backend(v.format).load(_artifact(shipment, v, key, art), _threads(shipment), v.device)
    return _loaded[key]


def score_shard(shipment: Shipment, v: VariantConfig, key: str, art: dict[str, Any], shard: Shard,
                class_map: tuple[int, ...], end2end: bool) -> dict[str, Any]:
    """Predict one shard's images with the shared pre/postprocessing; the COCO results come back, unscored.

    Returns:
        ``status`` ok with ``image_ids``, ``results`` (in image order), ``skipped`` and seconds; or a failure.
    """
    facts = node_facts()
    t0 = time.perf_counter()
    try:
        runtime = _runtime(shipment, v, key, art)
        split = shard.land(_inputs(shipment).out_dir)
        cfg = shipment.cfg
        evaluator, skipped = score(runtime.predict, split, class_map, cfg.imgsz, cfg.eval, end2end)
        return {"status": "ok", "image_ids": evaluator.image_ids, "results": evaluator.results, "skipped": skipped,
                "runtime": dict(runtime.info), "seconds": round(time.perf_counter() - t0, 2), "node": facts}
    except Exception as e:  # noqa: BLE001 - the driver records it; the other variants go on
        return _failure(e, facts)


def time_together(shipment: Shipment, entries: list[tuple[VariantConfig, str, dict[str, Any], bool]],
                  images: list[np.ndarray]) -> dict[str, Any]:
    """Load every variant of one target on this node and time them side by side (the local harness).

    Args:
        entries: ``(variant, key, shipped artifact, end2end)`` per variant.
        images: The preloaded latency images (decoded on the driver, as a local run decodes them).

    Returns:
        ``latency`` per variant name, ``failed`` (name -> reason) for those that would not load, and
        this node's facts.
    """
    facts = node_facts()
    cfg = shipment.cfg
    _loaded.clear()
    runtimes: dict[str, Runtime] = {}
    failed: dict[str, str] = {}
    keys, posts = {}, {}
    for v, key, art, end2end in entries:
        try:
            runtimes[v.label] = get_backend(v.format).load(_artifact(shipment, v, key, art), _threads(shipment),
                                                           v.device)
            keys[v.label], posts[v.label] = key, deploy_post(cfg.eval, cfg.latency, end2end)
        except Exception as e:  # noqa: BLE001 - that variant fails, the others are timed
            failed[v.label] = f"latency: {type(e).__name__}: {e}"
    try:
        lat = latency_pass(runtimes, keys, images, cfg.imgsz, cfg.latency, posts)
    except Exception as e:  # noqa: BLE001 - a runtime failed mid-way: nothing paired can be kept
        lat = {}
        failed |= {name: f"latency: {type(e).__name__}: {e}" for name in runtimes}
    return {"latency": lat, "failed": failed, "runtime": {n: dict(rt.info) for n, rt in runtimes.items()},
            "node": facts}
