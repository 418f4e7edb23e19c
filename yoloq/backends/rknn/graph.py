"""The ONNX side of an RKNN build: where the graph is cut between the NPU and the CPU, the tensors that bound a
block the toolkit keeps in float, and the uint8 pixels the NPU reads."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.backends.scope import head_float_nodes
from yoloq.errors import ConfigError, ExportError


def split_head(onnx_path: Path, keep: str, source: Any, dest: Path) -> tuple[Path, Path | None, list[str]]:
    """Cut a static ONNX where the head's float part begins: ``body.onnx`` (the NPU's) and ``tail.onnx`` (the
    CPU's), and the tensors between them. ``keep == "none"``: the whole graph, no tail."""
    import onnx
    from onnx.utils import extract_model

    dest.mkdir(parents=True, exist_ok=True)
    if keep == "none":
        body = dest / "body.onnx"
        shutil.copyfile(onnx_path, body)
        return body, None, []
    model = onnx.load(str(onnx_path), load_external_data=False)
    tail_nodes = set(head_float_nodes(onnx_path, keep, source.head))
    produced = {o: n.name for n in model.graph.node for o in n.output}
    consts = {i.name for i in model.graph.initializer}
    cut: list[str] = []
    for n in model.graph.node:
        if n.name not in tail_nodes:
            continue
        for t in n.input:
            if t and t not in consts and t in produced and produced[t] not in tail_nodes and t not in cut:
                cut.append(t)
    if not cut:
        raise ExportError(f"keep_head_float: {keep} found no head to run on the CPU in {onnx_path.name}")
    inputs = [i.name for i in model.graph.input if i.name not in consts]
    body, tail = dest / "body.onnx", dest / "tail.onnx"
    extract_model(str(onnx_path), str(body), inputs, cut)
    extract_model(str(onnx_path), str(tail), cut, [o.name for o in model.graph.output])
    return body, tail, cut


def block_ends(onnx_path: Path, blocks: list[str]) -> list[list[str]]:
    """Each named block (``model.10``, ``model.23/cv3.2``: :func:`block_of`'s names) as the [input, output] tensor
    pair the toolkit's hybrid quantization keeps in float.

    Raises:
        ConfigError: A block not in the graph, or one without exactly one input and one output tensor.
    """
    import onnx

    from yoloq.backends.onnxruntime.sensitivity import block_of

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    consts = {i.name for i in graph.initializer}
    pairs = []
    for block in blocks:
        nodes = [n for n in graph.node if block_of(n.name) == block]
        if not nodes:
            raise ConfigError(f"options.float_blocks: {block} is not a block of the model (e.g. model.10, "
                              f"model.23/cv3.2; see 'yoloq sensitivity')")
        made = {o for n in nodes for o in n.output}
        ins = list(dict.fromkeys(i for n in nodes for i in n.input if i and i not in made and i not in consts))
        used = {i for n in graph.node if block_of(n.name) != block for i in n.input} | \
            {o.name for o in graph.output}
        outs = list(dict.fromkeys(o for n in nodes for o in n.output if o in used))
        if len(ins) != 1 or len(outs) != 1:
            raise ConfigError(f"options.float_blocks: {block} has {len(ins)} inputs and {len(outs)} outputs; the "
                              f"toolkit keeps a subgraph with one of each in float")
        pairs.append([ins[0], outs[0]])
    return pairs


def to_pixels(batch: np.ndarray) -> np.ndarray:
    """A float [0, 1] NCHW batch as the uint8 pixels it was made from (letterboxed pixels / 255: exact)."""
    return np.clip(np.rint(batch * 255.0), 0, 255).astype(np.uint8)
