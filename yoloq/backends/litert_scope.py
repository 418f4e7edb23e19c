"""LiteRT INT8 scope: the TFLite tensor-name patterns of what stays in float (the head's decode and output
convolutions, the attention, the stem, the user's patterns and op types), as ai-edge-quantizer rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yoloq.backends.base import OptionSpec
from yoloq.backends.scope import INT8, KEEP_HEAD_FLOAT, keep_stem_float
from yoloq.errors import ConfigError
from yoloq.models import Head


# Ultralytics' LiteRT export names each tensor by its torch module path, e.g.
# ".../head.Detect_23/...Sequential_1/torch.nn.modules.conv.Conv2d_2;6": the head's class and module
# index, from the model's structure (``Detect_23``, ``v10Detect_23``). Tensors straight under the head
# module (``Detect_23;16``: box maths, sigmoid, an NMS-free head's top-k), its DFL and the box
# normalisation are the decode; a bare Conv2d under a head branch is a branch's output convolution
# (as keep_head_float: outputs does for ONNX).
def head_patterns(head: Head, keep: str) -> tuple[list[str], list[str]]:
    """The TFLite tensor-name patterns of ``head``'s decode and of its output convolutions kept in float."""
    import re

    mod = re.escape(head.type) + (f"_{head.index}" if head.index >= 0 else r"_\d+")
    decode = [rf"(?<!\w){mod};", *([r"\.DFL_\w+[;/]"] if head.dfl else []), r"_NormalizeCoords;",
              r"^serving_default_output"]
    outputs = [rf"(?<!\w){mod}/torch\.nn\.modules\.container\.Sequential_\d+/torch\.nn\.modules\.conv\.Conv2d_"]
    return (decode if keep in ("decode", "outputs") else []), (outputs if keep == "outputs" else [])


# Ultralytics' attention modules (PSA/C2PSA's Attention in YOLOv10/11/26, YOLO12's area attention AAttn),
# named in LiteRT tensor names by class and attribute, e.g. ``ultralytics.nn.modules.block.Attention_attn``.
ATTENTION = r"\.(?:Attention|AAttn)_\w+[/;]"


# Chosen on held-out train images, never evaluation ones (configs/int8-holdout-*.yaml, results/int8-holdout):
# YOLO11n's C2PSA block had the worst per-layer SQNR in int8; with the attention in float (fp16-stored
# weights) the worst fold kept 99.0% of torch FP32, where the previous default kept 97.4%. Runs stored
# before the option existed ran with the attention in int8 (``before``).
KEEP_ATTENTION_FLOAT = OptionSpec(bool, True, None, "attention blocks (PSA Attention, YOLO12 AAttn) left in float",
                                  INT8, before=False)


# The model's first N top-level modules (``DetectionModel_model/ultralytics.nn.modules.conv.Conv_1/``): the
# stem, at the highest resolutions, computed in float (weights stored int8). Chosen on held-out train images,
# never evaluation ones (configs/int8-holdout-*.yaml, results/int8-holdout/amd-epyc-2c-792874), and confirmed by
# yoloq tune on coco1k's 500 tuning images (results/default-tune/amd-epyc-2c-792874): 3 layers with mean ranges keep
# 99.8% of torch FP32; 4 layers agree a little more (0.962 against 0.957, not distinguishable) but keep 98.6%.
KEEP_STEM_FLOAT = keep_stem_float(3)


def stem_pattern(n: int) -> list[str]:
    """The TFLite tensor-name pattern of the model's first ``n`` top-level modules (none for 0)."""
    return [rf"_model/[\w.]+_(?:{'|'.join(str(i) for i in range(n))})[/;]"] if n > 0 else []


def float_weight_patterns(options: dict[str, Any], head: Head) -> list[str]:
    """The tensor-name patterns of the float scope whose weights are not stored in int8 (the head's decode and
    output convolutions, the attention, the user's patterns): the scope less the stem, which computes in float
    from int8-stored weights."""
    decode, outputs = head_patterns(head, options.get("keep_head_float", KEEP_HEAD_FLOAT.default))
    attention = [ATTENTION] if options.get("keep_attention_float", KEEP_ATTENTION_FLOAT.default) else []
    return [*decode, *outputs, *attention, *(options.get("float_patterns") or [])]


def scope_rules(options: dict[str, Any], op_names: set[str], head: Head) -> list[tuple[str, str]]:
    """The variant's float scope as ai-edge-quantizer rules: (tensor-name regex, TFLite op name).

    Raises:
        ConfigError: For an invalid regular expression or an unknown TFLite op type.
    """
    import re

    stem = stem_pattern(options.get("keep_stem_float", KEEP_STEM_FLOAT.default))
    patterns = [*float_weight_patterns(options, head), *stem]
    for pat in patterns:
        try:
            re.compile(pat)
        except re.error as e:
            raise ConfigError(f"options.float_patterns: {pat!r} is not a regular expression ({e})") from None
    bad = [t for t in options.get("float_types") or [] if t not in op_names]
    if bad:
        raise ConfigError(f"options.float_types: {bad} are not TFLite op types "
                          f"(e.g. {', '.join(sorted(op_names - {'ALL_SUPPORTED', 'INPUT', 'OUTPUT'})[:6])})")
    return [(p, "ALL_SUPPORTED") for p in patterns] + [(".*", t) for t in options.get("float_types") or []]


def float_ops(path: Path, patterns: list[str], types: set[str]) -> list[str]:
    """The float-kept ops of a quantized model, as ``OP:tensor-name`` (names cut to their last scope)."""
    import re

    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fu.read_model(str(path))
    graph = model.subgraphs[0]
    out = []
    for op in graph.operators:
        kind = fu.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
        name = fu.get_op_scope(op, graph.tensors)
        is_float = all(graph.tensors[i].type == 0 for i in op.outputs)  # 0: FLOAT32 in the TFLite schema
        kind = getattr(kind, "name", kind)
        if kind and is_float and (kind in types or any(re.search(p, name) for p in patterns)):
            first = name.split(";;")[0].rstrip(";")  # an op fused from several has several names
            out.append(f"{kind}:{'/'.join(first.split('/')[-2:])}")
    return out
