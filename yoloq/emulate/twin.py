"""A variant scored a second time on an emulated Arm CPU: its twin record ``<variant>@<cpu>``.

The twin runs the variant's own export (the same file the x86 record scored) on the evaluation images through the
same scoring loop; the record says ``ran as: int8 (aarch64 cortex-a76, emulated)``, carries no latency (emulation is
no measure of speed) and pairs with the x86 record (``pair.host``), so the report sets the two side by side.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import time
from pathlib import Path

from yoloq.artifacts import cached_artifact, ensure_artifact, variant_key, workdir_of
from yoloq.config import RunConfig, VariantConfig
from yoloq.emulate.diverge import locate
from yoloq.emulate.runtime import EmulatedRuntime
from yoloq.emulate.userland import REQUIREMENTS
from yoloq.inputs import RunInputs, apply_artifact, fail_record, make_validator, new_record
from yoloq.passes import accuracy_pass
from yoloq.preprocess import prepare, read_image
from yoloq.progress import say
from yoloq.records import Record, RecordStore

NOT_TIMED = "emulated (qemu-user): an emulated CPU is no measure of the device's speed; time the bundle on the device"


def twin_name(cfg: RunConfig, v: VariantConfig) -> str | None:
    """The emulated twin's record name, or None when the variant is not emulated."""
    em = cfg.emulation(v)
    return v.label + f"@{em.cpu}" if em else None


def twin_key(host_key: str, cfg: RunConfig, v: VariantConfig) -> str:
    """The twin's key: the variant's own, the emulated CPU and the pinned aarch64 runtimes."""
    em = cfg.emulation(v)
    blob = f"{host_key}|{em.arch}|{em.cpu}|{REQUIREMENTS.read_text()}" + (f"|{em.max_images}" if em.max_images else "")
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def emulated_twins(cfg: RunConfig, inputs: RunInputs, store: RecordStore, variants: list[VariantConfig]) -> None:
    """Score the emulated twin of every variant that asks for one (kept where already recorded with its key)."""
    for v in variants:
        name = twin_name(cfg, v)
        if name is None:
            continue
        host = store.get(v.label)
        key = twin_key(host.key if host else variant_key(cfg, inputs.source, inputs.calibration, v), cfg, v)
        prev = store.get(name)
        if prev and prev.key == key and prev.ok:  # a skipped twin is tried again: the userland may be set up since
            if host is not None and prev.order != host.order:
                prev.order = host.order
            if prev.ok and host is not None and "divergence" not in prev.metrics:
                locate_twin(inputs, v, prev, host.key)
            store.save()
            say(f"  {name}: already recorded, kept")
            continue
        say(f"[emulated] {name}")
        rec = score_twin(inputs, v, key, host)
        store.put(rec)
        say(f"  {name}: " + (f"mAP50-95 {rec.map:.4f}" if rec.ok else f"{rec.status.upper()}: {rec.reason}"))


def score_twin(inputs: RunInputs, v: VariantConfig, key: str, host: Record | None) -> Record:
    """Run the variant's export on the emulated CPU over the evaluation images; failures become status and reason."""
    cfg = inputs.cfg
    em = cfg.emulation(v)
    rec = new_record(inputs, v, key)
    rec.name = v.label + f"@{em.cpu}"
    rec.order = host.order if host else 0
    rec.pair = {"role": "emulated", "host": v.label, "arch": em.arch, "cpu": em.cpu}
    rec.execution = {"engine": "qemu-user", "arch": em.arch, "cpu": em.cpu}
    rec.extra["not_timed"] = NOT_TIMED
    if host is None or not host.ok:
        rec.status = "skipped"
        rec.reason = f"its x86 variant {v.label} did not run ({host.status if host else 'no record'}): " \
                     "nothing to compare"
        return rec
    runtime = None
    try:
        artifact, _ = ensure_artifact(cfg, inputs.source, inputs.calibration, inputs.out_dir, v, host.key,
                                      make_validator(inputs))
        apply_artifact(rec, artifact, inputs.out_dir)
        t0 = time.perf_counter()
        runtime = EmulatedRuntime(v.format, artifact.path, str(v.precision), em,
                                  inputs.out_dir / "emulated" / rec.name)
        rec.timings_s["start"] = round(time.perf_counter() - t0, 2)
        rec.runtime = dict(runtime.info)
        rec.execution |= {"workers": runtime.in_flight, "qemu": runtime.info["emulated"]["qemu"]}
        t0 = time.perf_counter()
        evalset = inputs.evalset
        if em.max_images and em.max_images < len(evalset.samples):  # the first N: compared on those images
            evalset = dataclasses.replace(evalset, samples=evalset.samples[: em.max_images])
            rec.pair["images"] = em.max_images
        metrics, skipped = accuracy_pass(runtime, evalset, inputs.class_map, cfg.imgsz, cfg.eval,
                                         rec.end2end, inputs.out_dir, rec.name)
        rec.timings_s["evaluate"] = round(time.perf_counter() - t0, 2)
        rec.metrics = metrics.to_dict() | {"skipped_images": skipped}
        rec.dataset["images"] = metrics.images
        runtime.close()
        locate_twin(inputs, v, rec, host.key)
    except Exception as e:  # noqa: BLE001 - one variant's failure must not end the others
        fail_record(rec, e, inputs.out_dir)
    finally:
        if runtime is not None:
            runtime.close()
        del runtime
        gc.collect()
    return rec


def locate_twin(inputs: RunInputs, v: VariantConfig, rec: Record, host_key: str) -> None:
    """Where the twin first computes differently from x86, on the first evaluation image (``metrics.divergence``)."""
    em = inputs.cfg.emulation(v)
    art = cached_artifact(workdir_of(inputs.out_dir, v), host_key)
    if art is None:
        return
    sample = inputs.evalset.samples[0]
    x, _ = prepare([read_image(sample.path)], inputs.cfg.imgsz)
    t0 = time.perf_counter()
    try:
        found = locate(v.format, Path(art.path), str(v.precision), em, x,
                       inputs.out_dir / "emulated" / rec.name / "probe")
    except Exception as e:  # noqa: BLE001 - the probe is a diagnosis: its failure never fails the record
        found = {"summary": None, "why": f"the probe failed: {type(e).__name__}: {str(e)[:200]}"}
    rec.metrics["divergence"] = found | {"image": Path(sample.path).name,
                                         "seconds": round(time.perf_counter() - t0, 1)}
