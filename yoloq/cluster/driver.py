"""``yoloq run CONFIG --ray [ADDRESS]``: the variant matrix on a Ray cluster, with the driver as the only writer.

Each variant's export runs as a task on any node, its accuracy pass as one task per shard of the
evaluation images; the shards' detections are merged on the driver, in image order, before one
``COCOeval`` (so the mAP is a local run's). Each target's variants are then timed side by side in
one task on a node that joined with that resource; untargeted variants on the driver's own node.
The driver writes every record (atomically, as a local run does) and keeps exports under the run
folder, so a crashed driver resumes like a local run. Ray retries a task whose node or process
died; one that still fails is recorded as failed with the reason, and the run goes on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from yoloq.artifacts import cached_artifact, remember_artifact, workdir_of
from yoloq.backends.base import Artifact
from yoloq.cluster import tasks
from yoloq.cluster.connect import Cluster
from yoloq.cluster.ship import Shard, Shipment, pack, unpack
from yoloq.config import RunConfig, VariantConfig
from yoloq.emulate.twin import emulated_twins
from yoloq.evaluate import CocoEvaluator
from yoloq.machine_load import run_lock
from yoloq.passes import finish_accuracy, latency_images
from yoloq.pipeline import (
    RunInputs,
    apply_artifact,
    awaits_target,
    describe,
    fail_record,
    finish_run,
    needs_timing,
    new_record,
    plan,
    prepare_inputs,
)
from yoloq.progress import say, set_library_log
from yoloq.provenance import fingerprint, machine, machine_id
from yoloq.records import Record, RecordStore, write_atomic


def default_out(cfg: RunConfig) -> Path:
    """A cluster run's folder: ``<output>/ray-<the driver's machine>`` (records name each node's machine)."""
    return Path(cfg.output) / f"ray-{machine()['id']}"


def _where(facts: dict[str, Any]) -> dict[str, Any]:
    return {"node": facts["node"], "ip": facts["ip"], "host": facts["host"], "machine": machine_id(facts["machine"])}


class _Variant:
    """One variant in flight: its record, its export, its shards' detections."""

    def __init__(self, rec: Record, v: VariantConfig, key: str, shards: int) -> None:
        self.rec, self.v, self.key = rec, v, key
        self.parts: list[dict[str, Any] | None] = [None] * shards
        self.t0 = time.perf_counter()


class RayRun:
    """The driver's side of one run: submit, collect, record."""

    def __init__(self, cluster: Cluster, cfg: RunConfig, inputs: RunInputs, store: RecordStore,
                 shard_images: int, retime: bool = False) -> None:
        self.cluster, self.cfg, self.inputs, self.store = cluster, cfg, inputs, store
        self.retime = retime  # time every variant again, though its latency is recorded
        self.shards = Shard.cut(inputs.evalset, shard_images)
        self._shipment: Any = None
        self._shard_refs: list[Any] = []

    @property
    def shipment(self) -> Any:
        """The shipment's object reference (packed and put once, on first use)."""
        if self._shipment is None:
            i = self.inputs
            self._shipment = self.cluster.put(Shipment.of(self.cfg, i.source, i.pool, i.calibration))
            self._shard_refs = [self.cluster.put(s) for s in self.shards]
        return self._shipment

    def run_variants(self, todo: list[tuple[int, VariantConfig, str, dict[str, Any]]]) -> None:
        """Export and score ``todo`` on the cluster; each record is written when its last shard is in."""
        c = self.cluster
        pending: dict[Any, tuple[str, _Variant, int]] = {}
        for i, v, key, meta in todo:
            rec = new_record(self.inputs, v, key)
            rec.order, rec.reference, rec.pair = meta["order"], meta["reference"], meta["pair"]
            rec.execution = {"engine": "ray", "address": c.address, "target": v.target}
            work = _Variant(rec, v, key, len(self.shards))
            pending[c.submit(tasks.export, self.shipment, v, key, gpu=v.device != "cpu")] = ("export", work, -1)
            say(f"[{i}/{len(self.cfg.variants)}] {v.label}: export submitted")
        while pending:
            ref, out = c.next_done(pending)
            kind, work, k = pending.pop(ref)
            if kind == "export":
                pending |= self._exported(work, out)
            else:
                work.parts[k] = out
                if all(p is not None for p in work.parts) or out["status"] != "ok":
                    self._scored(work, pending)

    def _exported(self, work: _Variant, out: dict[str, Any]) -> dict[Any, tuple[str, _Variant, int]]:
        rec, v = work.rec, work.v
        if out["status"] != "ok":
            self._record(work, out, "export: ")
            return {}
        rec.execution["export"] = _where(out["node"]) | {"seconds": out["seconds"]}
        rec.timings_s["export"] = out["seconds"]
        workdir = workdir_of(self.inputs.out_dir, v)
        path = self.inputs.source.path if out["files"] is None else unpack(out["files"], workdir)
        artifact = Artifact(path, out["format"], out["precision"], out["info"])
        remember_artifact(workdir, work.key, artifact)
        apply_artifact(rec, artifact, self.inputs.out_dir)
        say(f"  {v.label}: exported on {out['node']['host']} ({out['node']['node'][:8]}) in {out['seconds']:.1f}s; "
            f"scoring {len(self.shards)} shards")
        art = self.cluster.put({k: out[k] for k in ("files", "format", "precision", "info")})
        return {self.cluster.submit(tasks.score_shard, self.shipment, v, work.key, art, shard, self.inputs.class_map,
                                    rec.end2end, gpu=v.device != "cpu"): ("shard", work, k)
                for k, shard in enumerate(self._shard_refs)}

    def _scored(self, work: _Variant, pending: dict[Any, tuple[str, _Variant, int]]) -> None:
        for ref in [r for r, (_, w, _) in pending.items() if w is work]:  # a shard failed: drop the others
            self.cluster.cancel(ref)
            pending.pop(ref)
        bad = next((p for p in work.parts if p is not None and p["status"] != "ok"), None)
        if bad is not None:
            self._record(work, bad, "accuracy: ")
            return
        parts = [p for p in work.parts if p is not None]
        evaluator = CocoEvaluator(self.inputs.evalset.gt, self.inputs.class_map)
        skipped = list(self.inputs.evalset.unreadable)
        for p in parts:  # in shard order: the results list a local pass builds
            evaluator.add(p["image_ids"], p["results"])
            skipped += p["skipped"]
        rec = work.rec
        metrics = finish_accuracy(evaluator, self.inputs.out_dir, rec.name)
        rec.metrics = metrics.to_dict() | {"skipped_images": skipped}
        rec.runtime = dict(parts[0]["runtime"])
        rec.timings_s["evaluate"] = round(sum(p["seconds"] for p in parts), 2)  # compute time over all shards
        rec.execution["accuracy"] = {"shards": len(parts), "images_per_shard": len(self.shards[0].files),
                                     "nodes": sorted({p["node"]["node"] for p in parts}),
                                     "machines": sorted({machine_id(p["node"]["machine"]) for p in parts}),
                                     "wall_s": round(time.perf_counter() - work.t0, 2)}
        self._record(work, None)

    def _record(self, work: _Variant, failure: dict[str, Any] | None, where: str = "") -> None:
        rec = work.rec
        if failure is not None:
            fail_record(rec, failure["reason"], self.inputs.out_dir, where, failure.get("trace", ""),
                        skipped=failure["status"] == "skipped")
            if failure.get("node"):
                rec.execution["failed_on"] = _where(failure["node"])
        self.store.put(rec)
        say(f"  {rec.name}: {describe(rec)}")

    def time_targets(self, variants: list[VariantConfig]) -> None:
        """One side-by-side latency pass per target (untargeted variants: on the driver's node)."""
        by_label = {v.label: v for v in variants}
        groups: dict[str | None, list[Record]] = {}
        for r in self.store.all():
            if r.name in by_label and (r.ok or awaits_target(r, by_label[r.name])):
                groups.setdefault(by_label[r.name].target, []).append(r)
        for target, recs in groups.items():
            todo = needs_timing(recs, self.cfg, self.retime)
            if not todo:
                continue
            missing = [r for r in todo if cached_artifact(workdir_of(self.inputs.out_dir, by_label[r.name]), r.key)
                       is None]
            if missing:  # a run folder without its exports (a fresh clone): export and score those again
                say(f"latency: {len(missing)} exports are not here; exporting and scoring them again")
                self.run_variants([(r.order, by_label[r.name], r.key,
                                    {"order": r.order, "reference": r.reference, "pair": r.pair}) for r in missing])
                todo = [self.store.get(r.name) or r for r in todo]
                todo = [r for r in todo if r.ok]
            self._time(target, todo, by_label)

    def _time(self, target: str | None, todo: list[Record], by_label: dict[str, VariantConfig]) -> None:
        c = self.cluster
        where = f"target '{target}'" if target else "the driver's node"
        if target and not c.has_resource(target):
            for r in todo:
                r.status, r.reason = "skipped", c.no_target_reason(target)
            self.store.save()
            say(f"latency: {where}: no node has it; {len(todo)} variants skipped")
            return
        entries = []
        for r in todo:
            v = by_label[r.name]
            art = cached_artifact(workdir_of(self.inputs.out_dir, v), r.key)
            files = None if Path(art.path).resolve() == Path(self.inputs.source.path).resolve() else pack(art.path)
            entries.append((v, r.key, {"files": files, "format": art.format, "precision": art.precision,
                                       "info": dict(art.info)}, r.end2end))
        images = latency_images(self.inputs.evalset, self.cfg.latency.images)
        say(f"latency: {len(entries)} variants side by side on {where}")
        ref = c.submit(tasks.time_together, self.shipment, entries, images, target=target, here=target is None)
        _, out = c.next_done({ref: None}, target=target)
        if out.get("status") in ("failed", "skipped"):
            for r in todo:
                fail_record(r, out["reason"], self.inputs.out_dir, "latency: ", out.get("trace", ""))
            self.store.save()
            return
        node = out["node"]
        for r in todo:
            r.execution = dict(r.execution) | {"node": node["node"], "node_ip": node["ip"], "host": node["host"],
                                               "machine": fingerprint(node["machine"]), "versions": node["versions"],
                                               "runtime": out["runtime"].get(r.name, {})}
            r.machine = node["machine"]
            if r.name in out["latency"]:
                r.status, r.reason = "ok", ""  # a variant that waited for its target's node
                r.latency = out["latency"][r.name]
                r.timings_s["latency"] = round(r.latency["seconds"], 2)
                say(f"  {r.name}: p50 {r.p50:.1f} ms on {node['host']} ({node['node'][:8]}, "
                    f"{machine_id(node['machine'])})")
            elif r.name in out["failed"]:
                fail_record(r, out["failed"][r.name], self.inputs.out_dir, trace="")
        self.store.save()


def run_on_ray(cfg: RunConfig, address: str, out_dir: Path | None = None, shard_images: int = 250,
               wait: bool = False, retime: bool = False) -> int:
    """Run every variant of ``cfg`` on the Ray cluster at ``address`` (``auto``: the one ``ray start`` began here).

    One run per folder at a time, as a local run (``wait``: wait for the other); ``retime``: every variant timed
    again side by side, as a local run.

    Returns:
        0 when every variant is ok or skipped, 1 when any failed.

    Raises:
        YoloqError: When Ray is missing, the cluster cannot be reached, or the run cannot start.
    """
    out_dir = Path(out_dir) if out_dir else default_out(cfg)
    with run_lock(out_dir, wait):
        return _run_on_ray(cfg, address, out_dir, shard_images, retime)


def _run_on_ray(cfg: RunConfig, address: str, out_dir: Path, shard_images: int, retime: bool = False) -> int:
    inputs = prepare_inputs(cfg, out_dir)  # a bad model, dataset or folder is one line before any cluster work
    cluster = Cluster.connect(address)
    write_atomic(out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    set_library_log(out_dir / "logs" / "libraries.log")
    say(f"yoloq: {len(cfg.variants)} variants of {inputs.source.name} on {inputs.evalset.name}/"
        f"{inputs.evalset.split} ({len(inputs.evalset.samples)} images, shards of {shard_images}) on the Ray cluster "
        f"at {cluster.address}: {cluster.describe()}; output {out_dir}")
    store = RecordStore(out_dir)
    run = RayRun(cluster, cfg, inputs, store, shard_images, retime)
    try:
        run.run_variants(plan(cfg, inputs, store, list(cfg.variants)))
        emulated_twins(cfg, inputs, store, list(cfg.variants))  # scored on this (the driver's) machine
        run.time_targets(list(cfg.variants))
        return finish_run(cfg, store)
    finally:
        set_library_log(None)
        cluster.close()
