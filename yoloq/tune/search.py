"""``yoloq tune``: each INT8 variant's settings chosen on a tuning split, for this model, data and machine.

A search is a small object with a budget. It tries every candidate its backend declares
(:meth:`Backend.tune_space`, baselines first), scores them on the first ``tune.first_images`` images of
the tuning split (seeded order), keeps the better ``tune.keep`` share of each variant's candidates by
agreement with the reference (the baseline always), scores those on every tuning image, times the
finalists side by side with their backends' float variants, and chooses by :mod:`yoloq.tune.rule`. No
evaluation image is read: the tuning split is refused when it shares an image with the config's
evaluation split or its calibration pool.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.agreement import StoredDetections, agreement_eval
from yoloq.artifacts import ensure_artifact, variant_key
from yoloq.backends.base import Artifact, ExportContext
from yoloq.backends.registry import get_backend, resolve_variant
from yoloq.bootstrap import PerImageEval, interval, resample_weights, resampled_maps
from yoloq.config import RunConfig, TuneConfig, VariantConfig
from yoloq.data import load_split
from yoloq.data.pool import content_hash
from yoloq.errors import ConfigError, DataError
from yoloq.evaluate import CocoEvaluator, CocoMetrics
from yoloq.machine_load import run_lock
from yoloq.passes import deploy_post, latency_pass
from yoloq.pipeline import RunInputs, apply_artifact, fail_record, make_validator, new_record, prepare_inputs
from yoloq.postprocess import postprocess
from yoloq.preprocess import prepare, read_image
from yoloq.progress import bar, say, set_library_log, step
from yoloq.provenance import machine
from yoloq.records import Record, RecordStore
from yoloq.recover.cost import export_cost
from yoloq.tune.rule import Trial, choose, leader_of


def _changed(a: dict[str, Any], b: dict[str, Any]) -> int:
    return sum(1 for k in set(a) | set(b) if a.get(k) != b.get(k))


class TuneSearch:
    """The search over INT8 settings of ``cfg``'s INT8 variants (all, or those named in ``variants``).

    Args:
        cfg: The run config as parsed (not resolved): candidates add their options to the variant's own.
        out_dir: Where candidates, records and ``tune.md`` go.
        variants: Names of the INT8 variants to tune (default: every INT8 variant).
        candidates: Names of the candidates to try besides each backend's baseline (default: its whole space).
    """

    def __init__(self, cfg: RunConfig, out_dir: Path, variants: list[str] | None = None,
                 candidates: list[str] | None = None) -> None:
        self.tune: TuneConfig = cfg.tune
        if self.tune.data is None:
            raise ConfigError("config key 'tune.data': not set; name the tuning split, e.g. "
                              "tune: {data: {dataset: coco1k, split: tune}} (never the evaluation split)")
        int8 = [v for v in cfg.variants if str(v.precision) == "int8" and not v.artifact]  # not existing exports
        unknown = sorted(set(variants or []) - {v.label for v in int8})
        if unknown:
            raise ConfigError(f"--variant {unknown[0]}: not an int8 variant of the config; int8 variants: "
                              f"{', '.join(v.label for v in int8) or 'none'}")
        self.targets = [v for v in int8 if not variants or v.label in variants]
        if not self.targets:
            raise ConfigError("the config has no int8 variant to tune")
        ref = next(v for v in cfg.variants if v.label == cfg.reference_label)
        self.cfg, self.out_dir, self.machine = cfg, Path(out_dir), machine()
        self.trials: list[Trial] = []
        variants_run: dict[str, VariantConfig] = {ref.label: ref}
        spaces = {v.label: get_backend(v.format).tune_space(self.machine) for v in self.targets}
        known = {c.name for space in spaces.values() for c in space}
        unknown = sorted(set(candidates or []) - known)
        if unknown:  # a name no tuned backend has (each backend tries the names it has)
            raise ConfigError(f"--candidate {unknown[0]}: not a candidate of the tuned variants' backends "
                              f"({', '.join(sorted(known))})")
        for v in self.targets:
            backend = get_backend(v.format)
            space = [c for i, c in enumerate(spaces[v.label]) if i == 0 or not candidates or c.name in candidates]
            base = dict(v.options) | dict(space[0].options)
            for c in space:
                opts = dict(v.options) | dict(c.options)
                tv = dataclasses.replace(v, name=f"{v.label}@{c.name}", options=opts, target=None)
                variants_run[tv.label] = tv
                self.trials.append(Trial(tv.label, v.label, v.format, c.name, dict(c.options), c.why,
                                         _changed(opts, base)))
            for p in backend.precisions:
                if p != "int8":
                    fv = VariantConfig(v.format, p, v.device, name=f"{v.format}-{p}@tune")
                    variants_run.setdefault(fv.label, fv)
        resolved = {k: resolve_variant(x, f"tune candidate {k}") for k, x in variants_run.items()}
        self.run_cfg = dataclasses.replace(cfg, data=self.tune.data, variants=tuple(resolved.values()),
                                           reference=ref.label)
        self.variants = resolved
        self.ref = ref.label
        self.records: dict[str, Record] = {}
        self.results: dict[str, dict[int, list[dict[str, Any]]]] = {}  # per variant, per image: COCO results

    # -- inputs -------------------------------------------------------------------------------------------
    def _prepare(self) -> RunInputs:
        inputs = prepare_inputs(self.run_cfg, self.out_dir, "tuning")  # no calibration image in the tuning split
        evaluation = load_split(self.cfg.data, Path(self.cfg.base_dir))
        seen = {content_hash(s.path): s.path.name for s in evaluation.samples}
        for s in inputs.evalset.samples:
            if content_hash(s.path) in seen:
                raise DataError(f"tuning split '{inputs.evalset.name}/{inputs.evalset.split}' shares an image with "
                                f"the evaluation split '{evaluation.name}/{evaluation.split}' ({s.path.name} is also "
                                f"{seen[content_hash(s.path)]}); tune on images the evaluation never sees")
        return inputs

    def _add_sensitive(self, inputs: RunInputs) -> None:
        """For each target whose backend ranks its layers: one candidate per count N in ``tune.sensitivity`` that
        keeps in float the N blocks its ranking puts worst (measured on calibration images, the baseline's
        ranges and scope; blocks its scope already keeps in float left out), and one per count in
        ``tune.sensitivity_layers`` that keeps the N single layers ranked worst. Each block or layer counts as one
        setting changed, so a candidate that cannot be told from one with fewer in float loses to it."""
        levels = [(g, sorted(set(ns))) for g, ns in (("block", self.tune.sensitivity),
                                                      ("layer", self.tune.sensitivity_layers)) if ns]
        for v in self.targets:
            backend = get_backend(v.format)
            base = next(t for t in self.trials if t.variant == v.label)
            bv = self.variants[base.name]
            if not backend.supports_sensitivity or not backend.keep_float([]):
                continue  # no ranking, or no option that keeps a ranked block in float
            n_img = self.tune.sensitivity_images
            ctx = ExportContext(inputs.source, bv, self.cfg.imgsz, inputs.calibration,
                                self.out_dir / "artifacts" / bv.label, threads=self.cfg.latency.threads)
            for granularity, counts in levels:
                try:
                    backend.check(bv, inputs.source)
                    with step(f"rank the {granularity}s of {v.label} ({n_img} calibration images)"):
                        ranked = [g for g in backend.in_int8(ctx, backend.sensitivity(ctx, granularity, n_img))
                                  if math.isfinite(g.sqnr_db)]
                except Exception as e:  # noqa: BLE001 - the other candidates still run
                    say(f"  {v.label}: no {granularity} sensitivity candidates ({type(e).__name__}: {e})")
                    continue
                for n in counts:
                    if n > len(ranked):
                        continue
                    keep = backend.keep_float(ranked[:n])
                    if not keep:
                        break
                    opts = dict(bv.options)
                    for k, extra in keep.items():
                        opts[k] = [*(opts.get(k) or []), *extra]
                    short = f"worst{n}" + ("-layers" if granularity == "layer" else "")
                    label = f"{v.label}@{short}"
                    self.variants[label] = resolve_variant(
                        dataclasses.replace(v, name=label, options=opts, target=None), f"tune candidate {label}")
                    groups = ", ".join(f"{g.group} {g.sqnr_db:.1f} dB" for g in ranked[:n])
                    self.trials.append(Trial(label, v.label, v.format, short, {k: opts[k] for k in keep},
                                             f"the {n} {granularity}s yoloq sensitivity ranks worst in float "
                                             f"({groups})", n))
        self.run_cfg = dataclasses.replace(self.run_cfg, variants=tuple(self.variants.values()))

    def _items(self, inputs: RunInputs) -> list[tuple[Any, ...]]:
        """Every readable tuning image, decoded and letterboxed once, in one seeded order."""
        samples = list(inputs.evalset.samples)
        random.Random(self.tune.seed).shuffle(samples)
        items = []
        for s in bar(samples, desc="  loading tuning images"):
            try:
                x, lbs = prepare([read_image(s.path)], self.cfg.imgsz)
            except DataError:
                say(f"  warning: skipping unreadable tuning image {s.path.name}")
                continue
            items.append((x, lbs, s.image_id))
        return items

    # -- scoring ------------------------------------------------------------------------------------------
    def _export_load(self, inputs: RunInputs, name: str) -> Any:
        v = self.variants[name]
        rec = self.records.get(name)
        if rec is None:
            key = variant_key(self.run_cfg, inputs.source, inputs.calibration, v)
            rec = self.records[name] = new_record(inputs, v, key)
            backend = get_backend(v.format)
            backend.check(v, inputs.source)
            t0 = time.perf_counter()
            artifact, _ = ensure_artifact(self.run_cfg, inputs.source, inputs.calibration, self.out_dir, v, key,
                                          make_validator(inputs))
            rec.timings_s["export"] = round(time.perf_counter() - t0, 2)
            apply_artifact(rec, artifact, self.out_dir)
            rec.extra["artifact_path"] = str(artifact.path)
        art = Artifact(Path(rec.extra["artifact_path"]), rec.format, rec.precision, rec.artifact_info)
        runtime = get_backend(rec.format).load(art, self.cfg.latency.threads, rec.device)
        rec.runtime = dict(runtime.info)
        return runtime

    def _predict(self, inputs: RunInputs, name: str, items: list[tuple[Any, ...]]) -> None:
        """Predict the items this variant has not seen yet (per-image results kept for later rounds)."""
        done = self.results.setdefault(name, {})
        todo = [it for it in items if it[2] not in done]
        if not todo:
            return
        runtime = self._export_load(inputs, name)
        end2end = self.records[name].end2end
        t0 = time.perf_counter()
        for x, lbs, image_id in bar(todo, desc=f"  score {name}"):
            ev = CocoEvaluator({"images": [], "annotations": [], "categories": []}, inputs.class_map)
            ev.process(image_id, postprocess(runtime.predict(x), lbs, self.cfg.eval, end2end)[0])
            done[image_id] = ev.results
        self.records[name].timings_s["evaluate"] = round(self.records[name].timings_s.get("evaluate", 0)
                                                         + time.perf_counter() - t0, 2)
        del runtime
        gc.collect()

    def _evaluate(self, inputs: RunInputs, name: str, ids: list[int]) -> tuple[CocoMetrics, PerImageEval | None,
                                                                                StoredDetections]:
        ev = CocoEvaluator(inputs.evalset.gt, inputs.class_map)
        per = self.results[name]
        ev.add(ids, [r for i in ids for r in per[i]])
        m = ev.evaluate()
        return m, ev.per_image(), StoredDetections.from_results(ev.image_ids, ev.results)

    def _round(self, inputs: RunInputs, items: list[tuple[Any, ...]], trials: list[Trial],
               final: bool) -> tuple[dict[str, Any], np.ndarray]:
        """Score ``trials`` and the reference on ``items``; fill retention, paired drop, agreement (and, in the
        final round, each trial's paired intervals against its variant's leader). Returns each trial's
        resampled figures and the resample weights, for the pruning that follows a first round."""
        t_start = time.perf_counter()
        self._predict(inputs, self.ref, items)
        ids = [it[2] for it in items]
        ref_m, ref_pe, ref_det = self._evaluate(inputs, self.ref, ids)
        weights = resample_weights(len(ids), self.tune.bootstrap, self.tune.seed)
        ref_maps = resampled_maps(ref_pe, weights) if ref_pe is not None else None
        resampled: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
        for t in trials:
            if self.tune.minutes and not final and t.status == "pending" and \
                    time.perf_counter() - self.t0 > 60 * self.tune.minutes and t.changed:
                t.status, t.reason = "not tried", f"the search's {self.tune.minutes:g}-minute budget ran out"
                continue
            try:
                self._predict(inputs, t.name, items)
            except Exception as e:  # noqa: BLE001 - one candidate's failure must not end the search
                rec = self.records.get(t.name) or new_record(inputs, self.variants[t.name], "")
                self.records[t.name] = rec
                fail_record(rec, e, self.out_dir)
                t.status, t.reason = ("failed" if rec.status == "failed" else "skipped"), rec.reason
                continue
            m, pe, det = self._evaluate(inputs, t.name, ids)
            agree, agree_pe = agreement_eval(ref_det, det)
            t.status, t.images, t.map50_95 = "ok", len(ids), m.map50_95
            t.retention = m.map50_95 / ref_m.map50_95 if ref_m.map50_95 else None
            t.agreement = agree["map50_95"]
            maps = resampled_maps(pe, weights) if pe is not None and ref_maps is not None else None
            if maps is not None:
                t.drop = interval(ref_maps, maps, ref_m.map50_95 - m.map50_95, self.tune.seed)
            resampled[t.name] = (maps, agree_pe)
            t.rounds.append({"images": len(ids), "map50_95": m.map50_95, "ref_map50_95": ref_m.map50_95,
                             "retention": t.retention, "agreement": t.agreement, "drop": t.drop})
            self.records[t.name].metrics = m.to_dict() | {"agreement": agree, "map_drop_ci": t.drop,
                                                          "tune_round": len(t.rounds)}
        if final:
            self._versus_leader(trials, resampled, weights)
        self.records[self.ref].metrics = ref_m.to_dict()
        say(f"  round on {len(ids)} tuning images: {len(trials)} candidates in {time.perf_counter() - t_start:.0f}s")
        return resampled, weights

    def _versus_leader(self, trials: list[Trial], resampled: dict[str, Any], weights: np.ndarray) -> None:
        """Paired intervals of leader - candidate, for mAP50-95 and for agreement, over shared resamples."""
        for variant in {t.variant for t in trials}:
            group = [t for t in trials if t.variant == variant and t.status == "ok"]
            leader = leader_of(group, self.tune.min_retention)  # before timing: the accuracy leader
            if leader is None:
                continue
            lead_maps, lead_agree = resampled[leader.name]
            lead_agree_maps = resampled_maps(lead_agree, weights) if lead_agree is not None else None
            for t in group:
                maps, agree_pe = resampled[t.name]
                if t is leader:
                    continue
                if lead_maps is not None and maps is not None:
                    t.vs_leader["map"] = interval(lead_maps, maps, (leader.map50_95 or 0) - (t.map50_95 or 0),
                                                  self.tune.seed)
                if lead_agree_maps is not None and agree_pe is not None:
                    t.vs_leader["agreement"] = interval(lead_agree_maps, resampled_maps(agree_pe, weights),
                                                        (leader.agreement or 0) - (t.agreement or 0), self.tune.seed)

    def _prune(self, trials: list[Trial], agreements: dict[str, np.ndarray]) -> None:
        """Keep the better ``keep`` share of each variant's scored candidates by agreement, the baseline, and every
        candidate whose agreement the first images cannot tell from the best one's (paired interval of the
        difference includes 0): on 125 images, agreements 0.005 apart are often noise, and a rank alone would
        drop a candidate that all the images show better."""
        for variant in {t.variant for t in trials}:
            group = [t for t in trials if t.variant == variant and t.status == "ok"]
            n = max(1, math.ceil(self.tune.keep * len(group)))
            ranked = sorted(group, key=lambda t: -(t.agreement or 0.0))
            best = agreements.get(ranked[0].name) if ranked else None
            for rank, t in enumerate(ranked, 1):
                if rank <= n or not t.changed:
                    continue
                mine = agreements.get(t.name)
                gap = interval(best, mine, (ranked[0].agreement or 0) - (t.agreement or 0), self.tune.seed) \
                    if best is not None and mine is not None else None
                if gap is not None and not gap["significant"]:
                    t.rounds[-1]["kept_as_close"] = gap  # below the share, but not told from the best
                    continue
                why = f", {gap['lo']:+.4f} to {gap['hi']:+.4f} below the best" if gap else ""
                t.status = "pruned"
                t.reason = (f"agreement {t.agreement:.4f} ranked {rank} of {len(group)} on the first {t.images} "
                            f"images{why} (kept: the best {n}, the baseline and any not told from the best)")

    # -- timing -------------------------------------------------------------------------------------------
    def _time(self, inputs: RunInputs, items: list[tuple[Any, ...]]) -> None:
        """The finalists and their backends' float variants, side by side (the run's harness, fewer runs)."""
        finals = [t for t in self.trials if t.status == "ok" and get_backend(t.format).timed_here]  # no simulator
        floats = [n for n, v in self.variants.items() if str(v.precision) != "int8" and n != self.ref
                  and v.format in {t.format for t in finals}]
        runtimes = {}
        for name in floats + [t.name for t in finals]:
            try:
                runtimes[name] = self._export_load(inputs, name)
            except Exception as e:  # noqa: BLE001 - a float variant that cannot run is not a comparison
                say(f"  {name}: cannot be timed ({type(e).__name__}: {e})")
        lat_cfg = dataclasses.replace(self.cfg.latency, warmup=3, min_runs=30, min_seconds=0, images=8)
        images = [read_image(s.path) for s in inputs.evalset.samples[:lat_cfg.images]]
        posts = {n: deploy_post(self.cfg.eval, lat_cfg, self.records[n].end2end) for n in runtimes}
        lat = latency_pass(runtimes, {n: self.records[n].key for n in runtimes}, images, self.cfg.imgsz, lat_cfg,
                           posts)
        for n, stats in lat.items():
            self.records[n].latency = stats
        for t in finals:
            t.p50_ms = (self.records[t.name].latency or {}).get("p50_ms")
            t.size_mb = self.records[t.name].size_mb
            base = [(self.records[n].latency.get("p50_ms"), n) for n in floats
                    if self.variants[n].format == t.format and n in lat]
            if base:
                t.float_p50_ms, t.float_name = min(base)
        del runtimes
        gc.collect()

    # -- the search ---------------------------------------------------------------------------------------
    def optimize(self) -> dict[str, Trial | None]:
        """Run the search; returns each tuned variant's chosen trial (None: no INT8 setting is faster here)."""
        with run_lock(self.out_dir):
            return self._optimize()

    def _optimize(self) -> dict[str, Trial | None]:
        import torch

        torch.set_num_threads(self.cfg.latency.threads)  # the shared NMS runs in torch, as in a run
        self.t0 = time.perf_counter()
        set_library_log(self.out_dir / "logs" / "libraries.log")
        inputs = self._prepare()
        self._add_sensitive(inputs)
        items = self._items(inputs)
        if not items:
            raise DataError(f"tuning split '{inputs.evalset.name}/{inputs.evalset.split}' has no readable images")
        first = items[:self.tune.first_images]
        say(f"yoloq tune: {len(self.trials)} candidates of {len(self.targets)} int8 variants on "
            f"{inputs.evalset.name}/{inputs.evalset.split} ({len(first)} then {len(items)} images); machine "
            f"{self.machine['id']}; output {self.out_dir}")
        order = sorted(self.trials, key=lambda t: (t.changed > 0, self.trials.index(t)))  # baselines first
        resampled, weights = self._round(inputs, first, order, final=len(first) == len(items))
        if len(first) < len(items):
            self._prune(self.trials, {n: resampled_maps(pe, weights) for n, (_, pe) in resampled.items()
                                      if pe is not None})
            self._round(inputs, items, [t for t in order if t.status == "ok"], final=True)
        if self.tune.accuracy_control:
            from yoloq.tune.control import accuracy_control

            accuracy_control(self, inputs, items)  # where no candidate keeps the budget: the fewest blocks in float
        self._time(inputs, items)
        for t in self.trials:
            if t.name in self.records:
                rec = self.records[t.name]
                t.export_s, t.peak_mb = export_cost(rec.artifact_info or {}, rec.timings_s.get("export"))
        chosen = {}
        for v in self.targets:
            chosen[v.label] = choose([t for t in self.trials if t.variant == v.label], self.tune.min_retention)
        self.seconds = time.perf_counter() - self.t0
        store = RecordStore(self.out_dir)
        for r in self.records.values():
            r.extra.pop("artifact_path", None)
            r.reference = r.name == self.ref
            store.put(r)
        set_library_log(None)
        return chosen
