"""``yoloq export``: one variant as a deploy bundle for the device it runs on.

The bundle holds the model the device needs (for TensorRT the ONNX its builder reads, FP16 or
calibrated Q/DQ INT8, because an engine is specific to its GPU and TensorRT version and a Jetson's
cannot be built on the host), ``export.json`` (the variant, its resolved options, the calibration
list and its hash, what was kept in float and why, versions, this machine), a ``config.yaml`` that
evaluates and times that exact model on the device, and a README with the commands.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from yoloq.artifacts import workdir_of
from yoloq.backends.base import ExportContext
from yoloq.backends.registry import get_backend
from yoloq.config import RunConfig
from yoloq.errors import YoloqError
from yoloq.paths import display_path
from yoloq.pipeline import make_validator, prepare_inputs
from yoloq.progress import set_library_log
from yoloq.provenance import describe, machine, versions
from yoloq.records import write_atomic


def _device_config(cfg: RunConfig, label: str, options: dict[str, Any]) -> dict[str, Any]:
    """The config that evaluates and times the bundled model on the device (run inside the bundle)."""
    d = cfg.to_dict()
    v = d["variants"][[x.label for x in cfg.variants].index(label)]
    d["variants"] = [{**v, "name": label, "options": {**(v.get("options") or {}), **options}}]
    d["output"] = "results"
    return d


def _readme(label: str, notes: list[str]) -> str:
    lines = [f"# {label}: deploy bundle", "", f"Made by `yoloq export` on {describe(machine())}.", "",
             "`export.json` records the variant, its calibration (images, hash) and what stayed in float.", "",
             *notes, "", "Evaluate and time it on the device with yoloq (the dataset in `$YOLOQ_SHARED`, as on the "
                         "host):", "", "```bash", "pip install -e <yoloq repository>",
             "cd <this bundle> && yoloq run config.yaml", "```", ""]
    return "\n".join(lines)


def export_bundle(cfg: RunConfig, label: str, out: Path) -> Path:
    """Write the deploy bundle of variant ``label`` into ``out``; returns the bundled model's path.

    Raises:
        YoloqError: For an unknown variant, or an export that fails.
    """
    variant = next((v for v in cfg.variants if v.label == label), None)
    if variant is None:
        raise YoloqError(f"no variant '{label}' in the config; variants: {', '.join(v.label for v in cfg.variants)}")
    work = out / "work"
    inputs = prepare_inputs(cfg, work)
    set_library_log(out / "logs" / "libraries.log")
    ctx = ExportContext(inputs.source, variant, cfg.imgsz, inputs.calibration, workdir_of(work, variant),
                        validator=make_validator(inputs), threads=cfg.latency.threads, max_det=cfg.eval.max_det)
    try:
        art = get_backend(variant.format).deployable(ctx)
    except YoloqError:
        raise
    except Exception as e:  # noqa: BLE001 - any library failure is one line
        raise YoloqError(f"export of {label} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    src = Path(art.path)
    dest = out / (f"{label}{src.suffix}" if src.is_file() else label)
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    (shutil.copy2 if src.is_file() else shutil.copytree)(src, dest)
    record = {"variant": {"name": label, "format": variant.format, "precision": str(variant.precision),
                          "device": variant.device, "options": dict(variant.options)}, "imgsz": cfg.imgsz,
              "model": {"name": inputs.source.name, "file": display_path(inputs.source.path),
                        "sha256": inputs.source.sha256}, "head": inputs.source.head.describe(),
              "calibration": inputs.calibration.describe(), "artifact": dest.name, "artifact_info": dict(art.info),
              "versions": versions(), "machine": machine()}
    write_atomic(out / "export.json", json.dumps(record, indent=1, default=str))
    options, notes = get_backend(variant.format).deploy_notes(dest.name)
    write_atomic(out / "config.yaml", yaml.safe_dump(_device_config(cfg, label, options), sort_keys=False))
    write_atomic(out / "README.md", _readme(label, notes))
    shutil.rmtree(work, ignore_errors=True)
    return dest
