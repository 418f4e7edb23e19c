"""INT8 quantization scope, one definition for every backend: which layers stay in float, and the INT8
options the backends share (calibration count, scope, accuracy control, a prequantized Q/DQ graph).

``keep_head_float`` is defined here once; each graph kind reads it once: ONNX node names here (ONNX
Runtime, and OpenVINO, which maps them to its own op names), TFLite tensor names in ``litert``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from yoloq.backends.base import ExportContext, OptionSpec
from yoloq.errors import ConfigError
from yoloq.models import Head

INT8 = ("int8",)

CALIBRATION_IMAGES = OptionSpec(int, None, None, "use only the first N calibration images", INT8, minimum=1)
KEEP_HEAD_FLOAT = OptionSpec(str, "outputs", ("outputs", "decode", "none"),
                             "head left in float: decode + output convs / decode only / nothing", INT8)


def keep_stem_float(default: int) -> OptionSpec:
    """The ``keep_stem_float`` option with a backend's default: the model's first N top-level modules (its
    stem, at the highest resolutions) computed in float. Runs stored before it existed kept none (``before``:
    0, which stays out of variant keys, so their records and exports keep their keys)."""
    return OptionSpec(int, default, None, "the model's first N layers (its stem) computed in float", INT8,
                      minimum=0, before=0)


def stem_nodes(names: list[str], n: int) -> set[str]:
    """The ONNX nodes of the model's first ``n`` top-level modules (Ultralytics' ``/model.<i>/`` scopes)."""
    rx = re.compile(rf"^/model\.(?:{'|'.join(str(i) for i in range(n))})/") if n > 0 else None
    return {x for x in names if rx and rx.match(x)}


def stem_missing(onnx_path: Path, n: int) -> str | None:
    """A note when ``keep_stem_float: n`` finds none of its modules in the graph (its nodes are not named
    ``/model.<i>/...``, as Ultralytics' exports name them), so the stem runs in int8: None when it found them."""
    import onnx

    if n <= 0:
        return None
    names = [x.name for x in onnx.load(str(onnx_path), load_external_data=False).graph.node]
    if stem_nodes(names, n):
        return None
    return (f"keep_stem_float: {n} found no /model.0/ .. /model.{n - 1}/ nodes in {onnx_path.name} (not named as "
            f"Ultralytics exports name them): the stem runs in int8; name its nodes with float_nodes or "
            f"float_patterns to keep them in float")


SCOPE_OPTIONS = {
    "keep_head_float": KEEP_HEAD_FLOAT,
    "float_nodes": OptionSpec(list, None, None, "ONNX node names kept in float", INT8),
    "float_patterns": OptionSpec(list, None, None, "regular expressions of node names kept in float", INT8),
    "float_types": OptionSpec(list, None, None, "ONNX op types kept in float, e.g. [Concat, Softmax]", INT8),
}

PREQUANTIZED = {
    "prequantized": OptionSpec(str, None, None, "a Q/DQ INT8 ONNX (e.g. from yoloq qat) used as it is", INT8),
}

CONTROL_OPTIONS = {
    "accuracy_control": OptionSpec(bool, False, None, "keep the fewest layers in float that meet max_drop", INT8),
    "max_drop": OptionSpec(float, 0.01, None, "largest mAP50-95 drop allowed on held-out train images", INT8,
                           minimum=0),
    "holdout_images": OptionSpec(int, 40, None, "held-out train images (not calibration, not evaluation)", INT8,
                                 minimum=1),
    "max_float_groups": OptionSpec(int, 12, None, "accuracy control gives up after this many groups in float",
                                   INT8, minimum=1),
}



def distill_options(arithmetic: str, new: bool) -> dict[str, OptionSpec]:
    """The options of distillation from the FP32 model (:mod:`yoloq.recover.distill`) through a format's
    ``arithmetic`` (its fake quantizers), shared by the backends that train their own file's weights with it.
    ``new``: the backend had INT8 records before these options (each keeps its default out of variant keys)."""
    from yoloq.recover.distill import AUGMENTS, LOSSES, SCHEDULES

    def spec(kind: type, default: Any, choices: Any, text: str, **kw: Any) -> OptionSpec:
        return OptionSpec(kind, default, choices, text, INT8, **kw, **({"before": default} if new else {}))

    return {
        "distill_minutes": spec(float, 5.0, None, "the CPU time distillation trains for (weight_rounding: distill)",
                                minimum=0.1),
        "distill_steps": OptionSpec(int, 0, None, "train exactly this many steps instead (0: as many as "
                                    "distill_minutes allow): the same model on any day (on one CPU)", INT8, minimum=0,
                                    before=0),
        "distill_augment": OptionSpec(str, "none", AUGMENTS, "distillation's training images as they are, mirrored "
                                      "at random, or mirrored and zoomed (x0.7-1.3) at random: the teacher labels "
                                      "what the student sees, so more distinct inputs from the same calibration "
                                      "images", INT8, before="none"),
        "distill_loss": OptionSpec(str, "mse", LOSSES, "what distillation lowers: the squared error of every raw "
                                   "output, or a detector's distillation loss (the class scores' cross-entropy "
                                   "against the teacher's, boxes weighted by the teacher's score)", INT8,
                                   before="mse"),
        "distill_lr": OptionSpec(float, 1e-5, None, "distillation's learning rate (Adam): how far each weight "
                                 "moves a step", INT8, minimum=1e-8, maximum=1e-2, before=1e-5),
        "distill_schedule": OptionSpec(str, "constant", SCHEDULES, "distillation's learning rate: held over the "
                                       "budget, or decayed to 0 along a half cosine", INT8, before="constant"),
    } | ({"weight_rounding": OptionSpec(str, "nearest", ("nearest", "distill"), "int8 weights rounded to nearest, "
                                        f"or learned by distillation from the FP32 model through {arithmetic} (fake "
                                        "quantizers) on calibration images", INT8, before="nearest")} if new else {})


def distill_budget(ctx: ExportContext) -> str:
    """A variant's distillation budget in words: its step count, else its CPU minutes."""
    steps = ctx.option("distill_steps")
    return f"{steps} steps" if steps else f"{ctx.option('distill_minutes')} min"


def distill_as_configured(ctx: ExportContext, model: Any, grids: dict[str, Any], images: list[Any], **extra: Any
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`yoloq.recover.distill.distill` of ``model`` through ``grids`` on ``images`` with the variant's
    options from :func:`distill_options` (``extra``: a backend's own, e.g. ``learn_steps``)."""
    from yoloq.progress import say
    from yoloq.recover.distill import distill

    return distill(model, grids, images, ctx.imgsz, ctx.option("distill_minutes"), ctx.threads, say,
                   steps=ctx.option("distill_steps"), augment=ctx.option("distill_augment"),
                   loss=ctx.option("distill_loss"), schedule=ctx.option("distill_schedule"),
                   lr=ctx.option("distill_lr"), **extra)


def head_float_nodes(onnx_path: Path, keep: str = "outputs", head: Head | None = None) -> list[str]:
    """Names of the detection head's nodes to leave in float in an ONNX graph.

    The head is the model's last module, ``head.scope`` (e.g. ``/model.23/``), for every head type:
    its branches are ``cv2``/``cv3`` (one-to-many) and ``one2one_cv2``/``one2one_cv3`` (one-to-one).
    ``keep="decode"`` gives everything in the head outside its branches: the DFL where there is one,
    the sigmoid, box maths, concat, and an NMS-free head's top-k and gathers; ``keep="outputs"`` adds
    the branches' bare output convolutions (those outside their Conv-BN-SiLU blocks), the layers
    Ultralytics' own QAT also keeps in float; ``keep="none"`` gives nothing. Without a known head (a
    foreign graph) the scope of the graph's last Sigmoid stands in.
    """
    import onnx

    if keep == "none":
        return []
    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    scope = head.scope if head is not None else ""
    if not scope or not any(n.name.startswith(scope) for n in nodes):
        sigmoids = [n.name for n in nodes if n.op_type == "Sigmoid"]
        if not sigmoids or "/" not in sigmoids[-1].lstrip("/"):
            return []
        scope = "/" + sigmoids[-1].lstrip("/").split("/", 1)[0] + "/"
    branches = ("cv2.", "cv3.", "one2one_cv2.", "one2one_cv3.")
    out = []
    for n in nodes:
        if not n.name.startswith(scope):
            continue
        in_branch = any(f"{scope}{b}" in n.name for b in branches)
        if not in_branch or (keep == "outputs" and n.op_type == "Conv" and "/conv/" not in n.name):
            out.append(n.name)
    return out


def float_scope(onnx_path: Path, options: Mapping[str, Any], head: Head | None = None) -> list[str]:
    """Resolve the scope options against the graph of ``head``'s model: the node names kept in float, in order.

    Raises:
        ConfigError: When a named node does not exist or a pattern is not a valid regular expression.
    """
    import onnx

    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    names = [n.name for n in nodes]
    keep = set(head_float_nodes(onnx_path, options.get("keep_head_float", "outputs"), head))
    missing = [n for n in options.get("float_nodes") or [] if n not in names]
    if missing:
        raise ConfigError(f"options.float_nodes: {missing[:3]} are not nodes of {onnx_path.name} "
                          f"(see 'yoloq sensitivity' for the names)")
    keep |= set(options.get("float_nodes") or [])
    keep |= stem_nodes(names, options.get("keep_stem_float") or 0)
    for pat in options.get("float_patterns") or []:
        try:
            rx = re.compile(pat)
        except re.error as e:
            raise ConfigError(f"options.float_patterns: {pat!r} is not a regular expression ({e})") from None
        keep |= {n for n in names if rx.search(n)}
    types = set(options.get("float_types") or [])
    keep |= {n.name for n in nodes if n.op_type in types}
    return [n for n in names if n in keep]
