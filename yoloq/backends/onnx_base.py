"""Shared export steps: the FP32 ONNX every ONNX-based backend starts from, and Ultralytics exports."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from yoloq.errors import ExportError
from yoloq.models import SourceModel
from yoloq.progress import step


def _quiet_ultralytics() -> None:
    from ultralytics.utils import LOGGER

    LOGGER.setLevel(logging.WARNING)


def ultralytics_export(source: SourceModel, dest: Path, **kwargs: Any) -> Path:
    """Export a ``.pt`` with Ultralytics' own exporter and move the result to ``dest``.

    The checkpoint is copied to a scratch folder first so the exporter never writes beside the
    source model (the shared models folder stays untouched).

    Raises:
        ExportError: When the exporter fails.
    """
    from ultralytics import YOLO

    _quiet_ultralytics()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".export-") as tmp:
        pt = Path(tmp) / source.path.name
        shutil.copy2(source.path, pt)
        try:
            with step(f"export {kwargs.get('format')} fp32 (Ultralytics exporter)"):
                out = Path(YOLO(str(pt)).export(device="cpu", **kwargs))
        except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
            raise ExportError(f"Ultralytics export {kwargs.get('format')} failed: {type(e).__name__}: {e}") from e
        staging = dest.with_name(dest.name + ".partial")
        if staging.exists():
            shutil.rmtree(staging) if staging.is_dir() else staging.unlink()
        shutil.move(str(out), staging)
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        os.replace(staging, dest)
    return dest


def base_path(source: SourceModel, imgsz: int, root: Path, suffix: str) -> Path:
    """Where a shared FP32 export lives: keyed by the model's hash, imgsz and the exporter's versions."""
    from yoloq.provenance import versions

    v = versions()
    tag = hashlib.sha256("|".join(v.get(p, "") for p in ("ultralytics", "torch", "onnx", "onnxslim",
                                                        "litert-torch")).encode()).hexdigest()[:8]
    return root / "_base" / f"{source.name}-{source.sha256[:8]}-{imgsz}-{tag}-{suffix}"


def head_args(source: SourceModel, max_det: int, end2end: bool | None = None) -> tuple[str, dict[str, Any]]:
    """The exporter arguments that select the head branch, and a file-name tag for them.

    Ultralytics' exporter runs the one-to-one branch when ``nms=False`` (then its top-k keeps
    ``max_det``), the one-to-many branch otherwise. ``end2end`` overrides the source's choice (a
    format that cannot carry the one-to-one branch asks for ``False``).
    """
    e2e = source.end2end if end2end is None else end2end
    return (f"e2e{max_det}-", {"nms": False, "max_det": max_det}) if e2e else ("", {})


def base_onnx(source: SourceModel, imgsz: int, root: Path, dynamic: bool = False, max_det: int = 300) -> Path:
    """The FP32 ONNX model of ``source`` at ``imgsz`` with the source's head branch, exported once per run folder.

    Static batch 1 by default; ``dynamic=True`` gives a dynamic batch/size graph (TensorRT profiles).
    An ``.onnx`` source is used as it is.
    """
    if source.kind == "onnx":
        return source.path
    tag, head = head_args(source, max_det)
    dest = base_path(source, imgsz, root, f"{tag}{'dyn' if dynamic else 'b1'}.onnx")
    if not dest.is_file():
        ultralytics_export(source, dest, format="onnx", imgsz=imgsz, dynamic=dynamic, simplify=True,
                           batch=32 if dynamic else 1, **head)
    return dest
