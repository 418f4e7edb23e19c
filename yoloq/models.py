"""Resolve and describe the source detector (.pt or .onnx): its file, class names and head.

The head is read from the model's structure, never from a family's tensor names: its module (the
ONNX scope ``/model.<index>/``), whether boxes go through a DFL (``reg_max`` > 1), and whether it has
an NMS-free one-to-one branch. Which branch runs follows Ultralytics 8.4's rule for ``yolo val``: the
one-to-many branch with NMS by default (``nms: null``), the one-to-one branch with no NMS when
``nms: false`` and the model has one, and the one-to-one branch of a checkpoint fused down to it. An
``.onnx`` runs the branch it was exported with (its ``end2end`` metadata).
"""

from __future__ import annotations

import ast
import hashlib
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from yoloq.errors import ModelError
from yoloq.paths import cache_root, shared_root


@dataclass(frozen=True)
class Head:
    """The detection head, from the model's structure.

    ``type`` is the head's class (``Detect``, ``v10Detect``); ``index`` its module index (ONNX nodes
    under ``/model.<index>/``, LiteRT tensors under ``<type>_<index>``); ``dfl`` whether boxes are
    decoded through a DFL softmax; ``one2one`` whether an NMS-free one-to-one branch exists and
    ``one2many`` whether the one-to-many branch does; ``end2end`` whether the one-to-one branch runs.
    """

    type: str = "Detect"
    index: int = -1
    dfl: bool = True
    one2one: bool = False
    one2many: bool = True
    end2end: bool = False
    reason: str = ""  # why this branch runs

    @property
    def scope(self) -> str:
        """The head's ONNX node-name prefix, e.g. ``/model.23/`` (empty when unknown)."""
        return f"/model.{self.index}/" if self.index >= 0 else ""

    def describe(self) -> dict[str, object]:
        """Plain data for records: the head and the branch that ran."""
        return {"type": self.type, "dfl": self.dfl, "one2one": self.one2one,
                "branch": "one2one" if self.end2end else "one2many", "nms": not self.end2end, "reason": self.reason}


def choose_branch(head: Head, nms: bool | None) -> Head:
    """``head`` with the branch Ultralytics' validator runs for ``nms`` (see the module docstring)."""
    if not head.one2one:
        why = "the model has no one-to-one branch: NMS" if nms is False else "one-to-many branch + NMS"
        return replace(head, end2end=False, reason=why)
    if not head.one2many:
        return replace(head, end2end=True, reason="only the one-to-one branch is left (fused checkpoint): no NMS")
    if nms is False:
        return replace(head, end2end=True, reason="eval.nms: false: NMS-free one-to-one branch")
    return replace(head, end2end=False, reason="eval.nms: null (Ultralytics' default): one-to-many branch + NMS")


@dataclass(frozen=True)
class SourceModel:
    """The model every variant is exported from."""

    path: Path
    kind: str  # "pt" or "onnx"
    names: tuple[str, ...]
    sha256: str
    head: Head = Head()

    @property
    def name(self) -> str:
        """The model's file stem, e.g. ``yolo11n``."""
        return self.path.stem

    @property
    def end2end(self) -> bool:
        """Whether the NMS-free one-to-one branch is the one that runs."""
        return self.head.end2end


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_model(spec: str, base_dir: Path | None = None) -> Path:
    """Find the model file for ``spec``.

    Order: an existing path (as given, or relative to ``base_dir``); then ``<shared>/models/<name>``, then
    ``<cache>/models/<name>`` (``$YOLOQ_CACHE``); then Ultralytics' own resolution, which downloads release
    weights on a machine with internet.

    Raises:
        ModelError: When no file can be found or fetched.
    """
    p = Path(spec).expanduser()
    for cand in (p, (base_dir / p) if base_dir and not p.is_absolute() else None):
        if cand is not None and cand.is_file():
            return cand.resolve()
    shared = shared_root() / "models" / p.name
    for found in (shared, cache_root() / "models" / p.name):  # the cache: weights yoloq's scripts build
        if found.is_file():
            return found.resolve()
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


def _describe_pt(path: Path) -> tuple[tuple[str, ...], Head]:
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
    layers = yolo.model.model  # type: ignore[union-attr]
    m = layers[-1]
    head = Head(type=type(m).__name__, index=len(layers) - 1, dfl=int(getattr(m, "reg_max", 16)) > 1,
                one2one=getattr(m, "one2one_cv2", None) is not None, one2many=getattr(m, "cv2", None) is not None)
    return _names_from(yolo.names), head


def _onnx_head(m: object, meta: dict[str, str]) -> Head:
    """The head of an Ultralytics ONNX export, from its graph: the output's scope, a DFL softmax, a top-k."""
    nodes = m.graph.node  # type: ignore[attr-defined]
    out = m.graph.output[0].name  # type: ignore[attr-defined]
    last = next((n.name for n in nodes if out in n.output), "")
    m_index = re.match(r"^/model\.(\d+)/", last)  # a foreign graph's names may not follow Ultralytics'
    index = int(m_index.group(1)) if m_index else -1
    scope = f"/model.{index}/"
    mine = [n for n in nodes if n.name.startswith(scope)]
    end2end = meta.get("end2end", "False") == "True" or any(n.op_type == "TopK" for n in mine)
    return Head(type=meta.get("head", "Detect"), index=index, dfl=any(n.op_type == "Softmax" for n in mine),
                one2one=end2end or any("one2one" in n.name for n in mine), one2many=not end2end, end2end=end2end,
                reason="the ONNX graph's own branch (" + ("one-to-one, no NMS" if end2end else "NMS") + ")")


def _describe_onnx(path: Path) -> tuple[tuple[str, ...], Head]:
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
        raise ModelError(f"ONNX file {path.name} is not a YOLO detector (expected one output [B, 4+nc, N] "
                         f"or [B, K, 6])")
    return names, _onnx_head(m, meta)


def load_source(spec: str, base_dir: Path | None = None, nms: bool | None = None) -> SourceModel:
    """Resolve ``spec`` and read what yoloq needs to know about the model.

    ``nms`` is the config's ``eval.nms``: it chooses the head branch of a ``.pt`` (an ``.onnx`` runs
    the branch it was exported with).

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
    if kind == "pt":
        names, head = _describe_pt(path)
        head = choose_branch(head, nms)
    else:
        names, head = _describe_onnx(path)
    return SourceModel(path=path, kind=kind, names=names, sha256=digest, head=head)
