"""What every variant of a run shares (config, model, evaluation split, calibration, output folder) and the record
of one variant before it runs: filled as it exports, failed or skipped with one line."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from yoloq.accuracy import HeldOutValidator
from yoloq.backends.base import Artifact, MakeValidator, Validator
from yoloq.config import RunConfig, VariantConfig
from yoloq.data import DatasetSplit, load_split
from yoloq.data.calibration import CalibrationSet, calibration_from_pool
from yoloq.data.pool import ImagePool
from yoloq.decoded import max_bytes
from yoloq.errors import BackendUnavailable, DataError, YoloqError
from yoloq.machine_load import flag_threshold
from yoloq.models import SourceModel, load_source
from yoloq.paths import display_path
from yoloq.provenance import machine, versions
from yoloq.records import Record


@dataclass(frozen=True)
class RunInputs:
    """What every variant of a run shares: config, source model, evaluation split, image pool, calibration."""

    cfg: RunConfig
    source: SourceModel
    evalset: DatasetSplit
    class_map: tuple[int, ...]
    pool: ImagePool
    calibration: CalibrationSet
    out_dir: Path


def default_out(cfg: RunConfig) -> Path:
    """The config's ``output`` folder, one sub-folder per machine: a run never mixes machines' figures."""
    return Path(cfg.output) / machine()["id"]


def prepare_inputs(cfg: RunConfig, out_dir: Path, role: str = "evaluation") -> RunInputs:
    """Resolve the model and data and check the output folder before any variant runs (``role``: what the
    scored split is, for errors).

    Raises:
        YoloqError: Model, data, calibration overlap or output folder problems (the run cannot start).
    """
    base = Path(cfg.base_dir)
    max_bytes(), flag_threshold()  # the environment's settings, checked before any work
    source = load_source(cfg.model, base, cfg.eval.nms)
    evalset = load_split(cfg.data, base)
    if not evalset.samples:
        raise DataError(f"dataset '{evalset.name}' split '{evalset.split}' has no readable images")
    class_map = evalset.category_map(source.names)
    pool = ImagePool.build(cfg.calibration, evalset, base, role)
    calibration = calibration_from_pool(pool, cfg.calibration.images)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise YoloqError(f"output folder {out_dir} cannot be written ({e.strerror}); choose another with --out") \
            from None
    return RunInputs(cfg, source, evalset, class_map, pool, calibration, out_dir)


def make_validator(inputs: RunInputs) -> MakeValidator:
    """Held-out validation for accuracy-aware quantization: train images from the back of the pool."""

    def make(images: int, calibration_used: int) -> Validator:
        split = inputs.pool.labelled(inputs.pool.back(images, calibration_used), inputs.source.names)
        return HeldOutValidator(split, inputs.cfg.imgsz, inputs.cfg.eval, inputs.source.end2end)

    return make


def new_record(inputs: RunInputs, v: VariantConfig, key: str) -> Record:
    """The record of one variant before it runs: what it is and where it runs."""
    cfg, ev = inputs.cfg, inputs.evalset
    return Record(
        name=v.label, format=v.format, precision=str(v.precision), device=v.device, status="ok",
        model={"name": inputs.source.name, "file": display_path(inputs.source.path), "kind": inputs.source.kind,
               "sha256": inputs.source.sha256},
        head=inputs.source.head.describe(), options=dict(v.options), imgsz=cfg.imgsz,
        calibration=inputs.calibration.describe(),
        dataset={"name": ev.name, "split": ev.split, "images": len(ev.samples), "root": display_path(ev.root),
                 **({"file": display_path(ev.file)} if ev.file else {})},
        eval_settings={"conf": cfg.eval.conf, "iou": cfg.eval.iou, "max_det": cfg.eval.max_det,
                       "multi_label": cfg.eval.multi_label, "nms": cfg.eval.nms, "batch": 1},
        config_hash=cfg.hash(), key=key, versions=versions(), machine=machine(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def fail_record(rec: Record, e: BaseException | str, out_dir: Path, where: str = "", trace: str | None = None,
                skipped: bool = False) -> None:
    """Mark ``rec`` failed (its traceback to ``logs/<name>.log``), or skipped for a missing backend.

    ``e`` is the exception, or its one-line description when it happened elsewhere (a cluster node,
    whose ``trace`` is given).
    """
    if isinstance(e, BackendUnavailable) or skipped:
        rec.status, rec.reason = "skipped", str(e)
        return
    what = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
    rec.status, rec.reason = "failed", f"{where}{what}".splitlines()[0][:500]
    log = out_dir / "logs" / f"{rec.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(trace if trace is not None else traceback.format_exc())


def apply_artifact(rec: Record, artifact: Artifact, out_dir: Path) -> None:
    """Fill the record's export fields from ``artifact`` (a format may fall back to another head branch)."""
    rec.artifact = artifact_ref(Path(artifact.path), out_dir)
    rec.size_mb = artifact.size_bytes / 1e6
    rec.artifact_info = dict(artifact.info)
    rec.head = dict(artifact.info.get("head") or rec.head)


def artifact_ref(path: Path, out_dir: Path) -> str:
    """The artifact's path relative to the run folder when inside it (records stay valid when moved)."""
    try:
        return path.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        return display_path(path)
