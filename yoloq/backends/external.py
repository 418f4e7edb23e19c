"""Existing exports (a variant's ``artifact:``): what Ultralytics wrote into or beside the file, checked against
the run's input size and class names, and the file's content hash for the variant key."""

from __future__ import annotations

import ast
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import yaml

from yoloq.errors import ExportError
from yoloq.paths import display_path


def content_sha256(path: Path) -> str:
    """SHA-256 over a file, or over every file of a folder (names and bytes, sorted)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        h.update(f.read_bytes())
    return h.hexdigest()


def _parse(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def read_metadata(path: Path) -> dict[str, Any]:
    """Ultralytics' export metadata: ``metadata.yaml`` in or beside an export, ONNX metadata properties, or the
    JSON zipped into a ``.tflite``; empty when the file carries none."""
    for cand in ((path / "metadata.yaml") if path.is_dir() else None, path.parent / "metadata.yaml"):
        if cand is not None and cand.is_file():
            return yaml.safe_load(cand.read_text()) or {}
    if path.suffix == ".onnx":
        import onnx

        props = onnx.load(str(path), load_external_data=False).metadata_props
        return {p.key: _parse(p.value) for p in props}
    if path.suffix == ".tflite" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            name = z.namelist()[0]
            return json.loads(z.read(name).decode())
    return {}


def check_metadata(path: Path, imgsz: int, names: tuple[str, ...]) -> dict[str, Any]:
    """The export's metadata (imgsz, names, its exporter's version and arguments), after checking it matches the
    run.

    Raises:
        ExportError: When the file is missing, or was exported for another input size or other class names.
    """
    if not path.exists():
        raise ExportError(f"artifact {path} not found (give the file or folder 'yolo export' wrote)")
    meta = read_metadata(path)
    size = _parse(meta.get("imgsz"))
    sizes = {int(x) for x in size} if isinstance(size, (list, tuple)) else {int(size)} if size else set()
    if sizes and sizes != {imgsz}:
        raise ExportError(f"artifact {path.name} was exported at imgsz {sorted(sizes)}, the config runs imgsz {imgsz}: "
                          f"set imgsz to match or export again")
    got = _parse(meta.get("names"))
    if isinstance(got, dict):
        got = tuple(str(got[k]) for k in sorted(got, key=int))
    if got and tuple(got) != tuple(names):
        raise ExportError(f"artifact {path.name} has {len(got)} classes ({', '.join(list(got)[:3])}, ...), the model "
                          f"{len(names)} ({', '.join(names[:3])}, ...): export it from the config's model")
    keep = ("imgsz", "version", "date", "args", "stride", "batch", "task", "description")
    out = {k: v for k, v in meta.items() if k in keep}
    if isinstance(out.get("args"), dict):  # the exporter's paths (its calibration data) as records show paths
        out["args"] = {k: display_path(Path(v)) if isinstance(v, str) and Path(v).is_absolute() else v
                       for k, v in out["args"].items()}
    return out | {"classes": len(got) if got else None}
