"""Quantization scope shared by the ONNX-based backends: which nodes stay in float."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from yoloq.backends._export import head_float_nodes
from yoloq.backends.base import OptionSpec
from yoloq.errors import ConfigError

SCOPE_OPTIONS = {
    "keep_head_float": OptionSpec(str, "outputs", ("outputs", "decode", "none"),
                                  "head left in float: decode + output convs / decode only / nothing"),
    "float_nodes": OptionSpec(list, None, None, "ONNX node names kept in float"),
    "float_patterns": OptionSpec(list, None, None, "regular expressions of node names kept in float"),
    "float_types": OptionSpec(list, None, None, "ONNX op types kept in float, e.g. [Concat, Softmax]"),
}


PREQUANTIZED = {
    "prequantized": OptionSpec(str, None, None, "a Q/DQ INT8 ONNX (e.g. from yoloq qat) used as it is"),
}

CONTROL_OPTIONS = {
    "accuracy_control": OptionSpec(bool, False, None, "keep the fewest layers in float that meet max_drop"),
    "max_drop": OptionSpec(float, 0.01, None, "largest mAP50-95 drop allowed on held-out train images"),
    "holdout_images": OptionSpec(int, 40, None, "held-out train images (not calibration, not evaluation)"),
    "max_float_groups": OptionSpec(int, 12, None, "accuracy control gives up after this many groups in float"),
}


def float_scope(onnx_path: Path, options: Mapping[str, Any]) -> list[str]:
    """Resolve the scope options against the graph: the node names to keep in float, in graph order.

    Raises:
        ConfigError: When a named node does not exist or a pattern is not a valid regular expression.
    """
    import onnx

    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    names = [n.name for n in nodes]
    keep = set(head_float_nodes(onnx_path, options.get("keep_head_float", "outputs")))
    missing = [n for n in options.get("float_nodes") or [] if n not in names]
    if missing:
        raise ConfigError(f"options.float_nodes: {missing[:3]} are not nodes of {onnx_path.name} "
                          f"(see 'yoloq sensitivity' for the names)")
    keep |= set(options.get("float_nodes") or [])
    for pat in options.get("float_patterns") or []:
        try:
            rx = re.compile(pat)
        except re.error as e:
            raise ConfigError(f"options.float_patterns: {pat!r} is not a regular expression ({e})") from None
        keep |= {n for n in names if rx.search(n)}
    types = set(options.get("float_types") or [])
    keep |= {n.name for n in nodes if n.op_type in types}
    return [n for n in names if n in keep]
