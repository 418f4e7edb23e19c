"""Exported models on disk: the variant key, the manifest beside each export, and ``ensure_artifact``.

A variant's key hashes everything that determines its export and accuracy (model, resolved options,
calibration list, input size, evaluation thresholds, threads, library versions); its export is
reused while the manifest's key matches and the files exist.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

from yoloq.backends.base import Artifact, ExportContext, MakeValidator
from yoloq.backends.external import content_sha256
from yoloq.backends.registry import backend_class, get_backend
from yoloq.config import RunConfig, VariantConfig
from yoloq.data.calibration import CalibrationSet
from yoloq.errors import ExportError
from yoloq.models import SourceModel
from yoloq.paths import from_display
from yoloq.provenance import versions
from yoloq.records import write_atomic

# config sections that never change an export or its accuracy (latency settings only change timing,
# which the latency pass keys by its own settings)
_NOT_IN_KEY = ("variants", "output", "reference", "budget", "report", "qat", "latency", "streams", "tune", "emulate")


def _keyed_options(v: VariantConfig) -> dict:
    """The options that go into the key: an option set to what its absence meant before it existed
    (``OptionSpec.before``) is left out, so the exports and records made then keep their keys."""
    specs = backend_class(v.format).options
    return {k: x for k, x in v.options.items() if not (k in specs and specs[k].as_before(x))}


def variant_key(cfg: RunConfig, source: SourceModel, calibration: CalibrationSet, v: VariantConfig) -> str:
    """A hash of everything that determines one variant's export and accuracy."""
    d = cfg.to_dict()
    for k in _NOT_IN_KEY:
        d.pop(k, None)
    d["threads"] = cfg.latency.threads
    blob = {"cfg": d, "variant": {"format": v.format, "precision": str(v.precision), "device": v.device,
                                  "options": _keyed_options(v)},
            **({"artifact": content_sha256(external_path(cfg, v))} if v.artifact else {}),
            "model": source.sha256, "calibration": calibration.sha256, "versions": versions()}
    extra = backend_class(v.format).key_extra()
    if extra:  # only where a backend has some: every other key stays as it was
        blob["toolkit"] = extra
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def external_path(cfg: RunConfig, v: VariantConfig) -> Path:
    """Where a variant's existing export is: its ``artifact`` as given, else relative to the config's folder.

    Raises:
        ExportError: When it is in neither place.
    """
    p = from_display(str(v.artifact), Path(cfg.base_dir)) if str(v.artifact).startswith("$") else \
        Path(str(v.artifact)).expanduser()  # $YOLOQ_CACHE/... and $YOLOQ_SHARED/... as records write them
    for cand in (p, Path(cfg.base_dir) / p):
        if cand.exists():
            return cand.resolve()
    raise ExportError(f"variant {v.label}: artifact {v.artifact} not found (give the file or folder 'yolo export' "
                      f"wrote, absolute or relative to the config)")


def workdir_of(out_dir: Path, v: VariantConfig) -> Path:
    """The variant's folder under the run's ``artifacts/``."""
    return out_dir / "artifacts" / v.label


def cached_artifact(workdir: Path, key: str) -> Artifact | None:
    """The artifact exported earlier for this variant key, if its manifest and files are intact (and, for another
    variant's export this one shares, if that variant's own manifest still has the key: its folder may since hold
    an export under other settings)."""
    try:
        m = json.loads((workdir / "artifact.json").read_text())
    except (OSError, ValueError):
        return None
    path = Path(m.get("path", ""))
    path = path if path.is_absolute() else workdir / path
    if m.get("key") != key or not path.exists():
        return None
    if m.get("owner") and _own_key(workdir / m["owner"]) != key:
        return None
    return Artifact(path, m["format"], m["precision"], m.get("info", {}))


def _own_key(workdir: Path) -> str | None:
    """The key of the export ``workdir`` made itself (None where it shares another's or has none)."""
    try:
        m = json.loads((workdir / "artifact.json").read_text())
    except (OSError, ValueError):
        return None
    return None if m.get("owner") else m.get("key")


def sibling_artifact(workdir: Path, key: str) -> Artifact | None:
    """Another variant's export of the same key in the same run (one export scored on x86 and on an emulated CPU,
    say: the key is what determines the export), remembered as this variant's too; None where there is none."""
    for other in sorted(workdir.parent.glob("*/artifact.json")):
        if other.parent == workdir or _own_key(other.parent) != key:
            continue
        artifact = cached_artifact(other.parent, key)
        if artifact is not None:
            remember_artifact(workdir, key, artifact, owner=other.parent)
            return artifact
    return None


def remember_artifact(workdir: Path, key: str, artifact: Artifact, owner: Path | None = None) -> None:
    """Write the variant's artifact manifest (atomically, after the export has finished); ``owner``: the folder of
    the variant whose export this is, where it is another's."""
    ref = os.path.relpath(Path(artifact.path).resolve(), workdir.resolve())
    extra = {"owner": os.path.relpath(owner.resolve(), workdir.resolve())} if owner is not None else {}
    write_atomic(workdir / "artifact.json", json.dumps({"key": key, "path": ref, "format": artifact.format,
                                                        "precision": artifact.precision,
                                                        "info": dict(artifact.info)} | extra, default=str))


def ensure_artifact(cfg: RunConfig, source: SourceModel, calibration: CalibrationSet, out_dir: Path,
                    v: VariantConfig, key: str, validator: MakeValidator | None = None) -> tuple[Artifact, bool]:
    """The variant's export: the cached one when its key matches, else a new export (manifest written after).

    Returns:
        The artifact and whether it was reused.
    """
    workdir = workdir_of(out_dir, v)
    artifact = cached_artifact(workdir, key) or sibling_artifact(workdir, key)
    if artifact is not None:
        return artifact, True
    if v.artifact:  # an existing export, evaluated as it is (its manifest points at it)
        ctx = ExportContext(source, v, cfg.imgsz, calibration, workdir, threads=cfg.latency.threads)
        artifact = get_backend(v.format).adopt(external_path(cfg, v), ctx)
        remember_artifact(workdir, key, artifact)
        return artifact, False
    ctx = ExportContext(source, v, cfg.imgsz, calibration, workdir, validator=validator, threads=cfg.latency.threads,
                        max_det=cfg.eval.max_det)
    t0 = time.perf_counter()
    artifact = get_backend(v.format).export(ctx)
    if "export_seconds" not in artifact.info:  # kept with the export, so a run that reuses it still says what it cost
        artifact = dataclasses.replace(artifact, info={**artifact.info,
                                                       "export_seconds": round(time.perf_counter() - t0, 1)})
    remember_artifact(workdir, key, artifact)
    return artifact, False
