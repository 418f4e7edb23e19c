"""The INT8 scope of backends that quantize from the PyTorch model itself (ExecuTorch, NCNN): the fused
Ultralytics model as its exporter prepares it, and which of its modules stay in float, by module name.

The head's decode (and by default its output convolutions) and the first ``keep_stem_float`` top-level modules
are left in float: the same rule ``keep_head_float`` states for ONNX node names in :mod:`yoloq.backends.scope`.
"""

from __future__ import annotations

from typing import Any

BRANCHES = ("cv2", "cv3", "one2one_cv2", "one2one_cv3")  # the head's box and class branches, per level


def export_module(source: Any, imgsz: int, end2end: bool, max_det: int, fmt: str) -> Any:
    """The fused Ultralytics model in export mode for format ``fmt`` (its head returns the decoded output only),
    as Ultralytics' exporter prepares it, on the one branch this variant runs."""
    import torch
    from ultralytics import YOLO

    model = YOLO(str(source.path)).model
    head = model.model[-1]
    if getattr(head, "one2one_cv2", None) is not None:
        model.end2end = end2end
        head.max_det, head.agnostic_nms = max_det, False
    model = model.fuse(verbose=False).float().eval()
    for m in model.modules():
        if hasattr(m, "export") and hasattr(m, "format"):  # the Detect head and its subclasses
            m.export, m.format, m.dynamic = True, fmt, False
    for p in model.parameters():
        p.requires_grad_(False)
    model(torch.zeros(1, 3, imgsz, imgsz))  # build the anchors once, as the exporter's dry run does
    return model


def module_scope(model: Any, keep_head: str, stem: int) -> tuple[list[str], list[str]]:
    """Module names left in float and, inside those, the ones quantized after all: the head kept float except its
    inner convolutions (``outputs``) or its whole branches (``decode``), and the stem's first ``stem`` modules."""
    head_index = len(model.model) - 1
    head, prefix = model.model[-1], f"model.{head_index}"
    floats = [f"model.{i}" for i in range(min(stem, head_index))]
    quantized: list[str] = []
    if keep_head != "none":
        floats.append(prefix)
        for branch in BRANCHES:
            for i, seq in enumerate(getattr(head, branch, None) or []):
                inner = list(range(len(seq) - 1)) if keep_head == "outputs" else [None]
                quantized += [f"{prefix}.{branch}.{i}" + ("" if j is None else f".{j}") for j in inner]
    return floats, quantized


def within(name: str, prefixes: set[str]) -> bool:
    """Whether module ``name`` is one of ``prefixes`` or inside one."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def in_float(name: str, floats: set[str], quantized: set[str]) -> bool:
    """Whether module ``name`` stays in float under a scope from :func:`module_scope`."""
    return within(name, floats) and not within(name, quantized)


def conv_order(model: Any, imgsz: int) -> list[tuple[str, int, int, int]]:
    """Every ``Conv2d`` the model runs, in the order it runs them: (module name, out channels, kernel, groups)."""
    import torch

    names = {m: n for n, m in model.named_modules()}
    order: list[tuple[str, int, int, int]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(
        (names[mod], mod.out_channels, mod.kernel_size[0], mod.groups)))
        for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, imgsz, imgsz))
    finally:
        for h in hooks:
            h.remove()
    return order
