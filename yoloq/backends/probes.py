"""Divergence probes: a format's intermediate tensors on one input, read without changing what its runtime runs.

Each probe is the source of ``probe(path, x)`` returning ``[(tensor, op, input tensors, array), ...]`` in execution
order, run by two interpreters (x86 and emulated aarch64) on the same input, so the first operation whose output
differs while its inputs are the same names the kernel that computes differently. ``prepare`` (run on the host, with
yoloq's environment) makes the file the probe reads. A format whose intermediate tensors cannot be read without
running other kernels (LiteRT: reading them turns XNNPACK off; OpenVINO: extra outputs undo its fusions) has none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

_ORT = '''
def probe(path, x):
    """ONNX Runtime: every int8 tensor (the activations between its int8 kernels), then the output."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    meta = json.loads(path.with_suffix(".probe.json").read_text())
    ys = session.run(None, {inp.name: x.astype(np.float16 if "float16" in inp.type else np.float32)})
    got = {o.name: y for o, y in zip(session.get_outputs(), ys)}
    order = list(meta) + [o.name for o in session.get_outputs() if o.name not in meta]  # the graph's order
    return [(n, *meta.get(n, ["output", []]), got[n]) for n in order]
'''

_NCNN = '''
def probe(path, x):
    """ncnn: every layer's output blobs, in the param file's order, one extractor (nothing recomputed)."""
    import ncnn

    precision = json.loads((HERE / "meta.json").read_text())["precision"]
    lines = (path / "model.ncnn.param").read_text().split("\\n")[2:]
    layers = [f.split() for f in lines if len(f.split()) >= 4]
    net = ncnn.Net()
    net.opt.num_threads, net.opt.use_vulkan_compute = 1, False
    half = precision == "fp16"
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = half
    net.opt.use_bf16_storage, net.opt.use_int8_inference = False, precision == "int8"
    net.load_param(str(path / "model.ncnn.param"))
    net.load_model(str(path / "model.ncnn.bin"))
    ex = net.create_extractor()
    ex.set_light_mode(False)
    rows = []
    for f in layers:
        kind, nb, nt = f[0], int(f[2]), int(f[3])
        bottoms, tops = f[4:4 + nb], f[4 + nb:4 + nb + nt]
        if kind == "Input":
            ex.input(tops[0], ncnn.Mat(np.ascontiguousarray(x[0])))
            continue
        if not tops:
            continue
        int8 = any(p.startswith("8=") and p != "8=0" for p in f[4 + nb + nt:]) and kind == "Convolution"
        rows += [(t, kind + (" (int8)" if int8 else ""), bottoms, np.array(ex.extract(t)[1])) for t in tops]
    return rows
'''


def _prepare_ort(artifact: Path, workdir: Path) -> Path:
    """The ONNX with every int8 tensor as a graph output (the activations between int8 kernels, which ONNX Runtime
    materializes whatever it fuses), and beside it, per such tensor, the op that computes it (through the float
    ops of a DequantizeLinear -> op -> QuantizeLinear group, which it fuses into one int8 kernel) and the int8
    tensors that op reads."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(artifact)))
    g = model.graph
    int8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.output, *g.input]}
    consts = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    known = {o.name for o in g.output}
    # int8 tensors: what QuantizeLinear and the QLinear* kernels write (contrib ops: no shape inference), carried
    # through the ops that move int8 values without arithmetic
    moves = {"MaxPool", "Split", "Reshape", "Concat", "Resize", "Slice", "Transpose", "Flatten", "Squeeze",
             "Unsqueeze", "Identity"}
    is8: set[str] = set()
    for n in g.node:
        if n.op_type == "QuantizeLinear" or n.op_type.startswith("QLinear") or \
                (n.op_type in moves and n.input and n.input[0] in is8):
            is8.update(n.output)
    is8 |= {t for t, ty in types.items() if ty in int8}

    def reads(node: onnx.NodeProto) -> tuple[list[str], list[str]]:  # (the int8 tensors behind it, its float ops)
        ins, ops, todo, seen = [], [node.op_type], list(node.input), set()
        while todo:
            t = todo.pop()
            if t in seen or t in consts or not t:
                continue
            seen.add(t)
            if t in is8 or t not in producer:
                ins.append(t)
                continue
            src = producer[t]
            ops.append(src.op_type)
            todo += list(src.input)
        return ins, ops

    meta: dict[str, list] = {}
    for n in g.node:
        for t in n.output:
            if t not in is8 or t in known:
                continue
            ins, ops = reads(n)
            floats = list(dict.fromkeys(o for o in ops[1:] if o not in ("QuantizeLinear", "DequantizeLinear")))
            kernel = f"QuantizeLinear(float {'+'.join(reversed(floats))})" if n.op_type == "QuantizeLinear" and \
                floats else n.op_type
            meta[t] = [kernel, ins]
            g.output.append(onnx.helper.make_empty_tensor_value_info(t))
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "probe.onnx"
    onnx.save(model, str(out))
    out.with_suffix(".probe.json").write_text(json.dumps(meta))
    return out


def _same(artifact: Path, workdir: Path) -> Path:
    return artifact


# format -> (the probe's source, the host step that makes the file it reads)
PROBES: dict[str, tuple[str, Callable[[Path, Path], Path]]] = {"onnxruntime": (_ORT, _prepare_ort),
                                                                "ncnn": (_NCNN, _same)}
NO_PROBE = {"litert": "XNNPACK runs the whole graph as one delegated op; reading intermediate tensors turns it off "
                      "(other kernels), so only the outputs are compared",
            "openvino": "extra outputs would undo the fusions OpenVINO compiles, so only the outputs are compared"}


def probe_for(fmt: str) -> tuple[str, Callable[[Path, Path], Path]] | None:
    """The probe source and host preparation of format ``fmt``; None where it has none (:data:`NO_PROBE` says why)."""
    return PROBES.get(fmt)
