"""Resolve and describe the source detector (.pt or .onnx): its file, class names and head type."""

from __future__ import annotations

import ast
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from yoloq.errors import ModelError
from yoloq.paths import shared_root


@dataclass(frozen=True)
class SourceModel:
    """The model every variant is exported from."""

    path: Path
    kind: str  # "pt" or "onnx"
    names: tuple[str, ...]
    end2end: bool
    sha256: str

    @property
    def name(self) -> str:
        """The model's file stem, e.g. ``yolo11n``."""
        return self.path.stem


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_model(spec: str, base_dir: Path | None = None) -> Path:
    """Find the model file for ``spec``.

    Order: an existing path (as given, or relative to ``base_dir``); then ``<shared>/models/<name>``;
    then Ultralytics' own resolution, which downloads release weights on a machine with internet.

    Raises:
        ModelError: When no file can be found or fetched.
    """
    p = Path(spec).expanduser()
    for cand in (p, (base_dir / p) if base_dir and not p.is_absolute() else None):
        if cand is not None and cand.is_file():
            return cand.resolve()
    shared = shared_root() / "models" / p.name
    if shared.is_file():
        return shared.resolve()
    if p.parent != Path(".") or p.suffix not in {".pt", ".onnx"}:
        raise ModelError(f"model file not found: {spec} (give an existing .pt/.onnx path, or a name such as "
                         f"yolo11n.pt found in {shared.parent})")
    try:  # a bare release name: let Ultralytics fetch it (works only with internet)
        from ultralytics.utils.downloads import attempt_download_asset

        got = Path(attempt_download_asset(p.name))
    except Exception as e:  # noqa: BLE001 - any download failure means the same thing to the user
        raise ModelError(f"model '{spec}' is not in {shared.parent} and could not be downloaded ({e}); "
                         f"put the file there or set YOLOQ_SHARED") from None
    if not got.is_file():
        raise ModelError(f"model '{spec}' is not in {shared.parent} and could not be downloaded; "
                         f"put the file there or set YOLOQ_SHARED")
    return got.resolve()


def _names_from(obj: object) -> tuple[str, ...]:
    if isinstance(obj, dict):
        return tuple(str(obj[k]) for k in sorted(obj))
    return tuple(str(n) for n in obj)  # type: ignore[union-attr]


def _describe_pt(path: Path) -> tuple[tuple[str, ...], bool]:
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    LOGGER.setLevel(logging.WARNING)
    try:
        yolo = YOLO(str(path), task=None)
    except Exception as e:  # noqa: BLE001 - torch/ultralytics raise many kinds for a bad file
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"cannot read model file {path.name}: {type(e).__name__}: {first} "
                         f"(is it an Ultralytics .pt checkpoint?)") from None
    if yolo.task != "detect":
        raise ModelError(f"model {path.name} is a '{yolo.task}' model, not a detector; yoloq needs a detect model")
    head = yolo.model.model[-1]  # type: ignore[index,union-attr]
    return _names_from(yolo.names), bool(getattr(head, "end2end", False))


def _describe_onnx(path: Path) -> tuple[tuple[str, ...], bool]:
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and others
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"cannot read ONNX file {path.name}: {type(e).__name__}: {first}") from None
    meta = {p.key: p.value for p in m.metadata_props}
    if meta.get("task", "detect") != "detect":
        raise ModelError(f"model {path.name} is a '{meta['task']}' model, not a detector")
    if "names" not in meta:
        raise ModelError(f"ONNX file {path.name} carries no class names in its metadata; "
                         f"export it with Ultralytics (yolo export format=onnx)")
    names = _names_from(ast.literal_eval(meta["names"]))
    outs = m.graph.output
    if len(outs) != 1 or len(outs[0].type.tensor_type.shape.dim) != 3:
        raise ModelError(f"ONNX file {path.name} is not a YOLO detector (expected one output [B, 4+nc, N])")
    return names, meta.get("end2end", "False") == "True"


def load_source(spec: str, base_dir: Path | None = None) -> SourceModel:
    """Resolve ``spec`` and read what yoloq needs to know about the model.

    Raises:
        ModelError: When the file is missing, unreadable, or not a detector.
    """
    path = resolve_model(spec, base_dir)
    kind = path.suffix.lower().lstrip(".")
    if kind not in {"pt", "onnx"}:
        raise ModelError(f"model {path.name}: unsupported file type '.{kind}' (use an Ultralytics .pt or .onnx)")
    try:
        digest = file_sha256(path)
    except OSError as e:
        raise ModelError(f"model file {path} cannot be read: {e.strerror}") from None
    names, end2end = _describe_pt(path) if kind == "pt" else _describe_onnx(path)
    return SourceModel(path=path, kind=kind, names=names, end2end=end2end, sha256=digest)
