"""GPTQ rounding of a LiteRT model's int8 convolution weights (Frantar et al. 2023, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers"), done on the FP32 ``.tflite`` before ai-edge-quantizer
quantizes it.

ai-edge-quantizer's own GPTQ covers FULLY_CONNECTED ops only; a YOLO detector is convolutions. For each CONV_2D
whose weights the variant stores in int8, the second moments of its input patches (``H = X^T X``, from the FP32
model on calibration images) let GPTQ round the weights one input column at a time and fold each column's
rounding error into the columns not yet rounded, so the layer's output moves less than with rounding to nearest.
The weights are written back on ai-edge-quantizer's own grid (symmetric per output channel, scale = largest
weight / 127, narrow range), with each channel's largest weight kept, so that when the quantizer rounds them to
nearest it finds exactly these integers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

QMAX = 127  # ai-edge-quantizer's symmetric int8 weights: narrow range [-127, 127], scale = max|w| / 127
GPTQ_IMAGES = 64  # calibration images whose convolution inputs make H


def gptq_round(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """GPTQ-rounded copy of ``w`` ([out, in], float) for inputs with second moments ``h`` ([in, in]), on the
    symmetric per-output-channel int8 grid of ``w``'s own largest weights (each channel's largest weight kept)."""
    from yoloq.recover.rounding import gptq_integers

    w = w.astype(np.float64)
    scale = np.maximum(np.abs(w).max(axis=1), 1e-12) / QMAX
    q = gptq_integers(w, h, 1.0 / scale, QMAX).astype(np.float64)
    top = np.abs(w).argmax(axis=1)  # keep each channel's largest weight, so the quantizer's scale is the same
    rows = np.arange(w.shape[0])
    q[rows, top] = np.sign(w[rows, top]) * QMAX
    return q * scale[:, None]


def patches(x: np.ndarray, kh: int, kw: int, stride: tuple[int, int], dilation: tuple[int, int],
            same: bool) -> np.ndarray:
    """The input patches of a 2-D convolution over ``x`` ([H, W, C], NHWC without the batch), as rows
    [positions, kh * kw * C] in TFLite's weight order (OHWI)."""
    sh, sw = stride
    dh, dw = dilation
    if same:  # TFLite SAME: output ceil(size / stride), the extra padding at the end
        ph = max((-(-x.shape[0] // sh) - 1) * sh + (kh - 1) * dh + 1 - x.shape[0], 0)
        pw = max((-(-x.shape[1] // sw) - 1) * sw + (kw - 1) * dw + 1 - x.shape[1], 0)
        x = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(0, 1))
    win = win[::sh, ::sw, :, ::dh, ::dw]  # [Ho, Wo, C, kh, kw]
    return win.transpose(0, 1, 3, 4, 2).reshape(-1, kh * kw * x.shape[2])


def apply(fp32: Path, out: Path, images: Iterable[np.ndarray], rounds: Callable[[str], bool],
          threads: int = 2) -> dict[str, int]:
    """Write a copy of the FP32 LiteRT model ``fp32`` to ``out`` with the weights of every CONV_2D whose op name
    ``rounds`` accepts GPTQ-rounded, from input second moments over ``images`` (NCHW float batches of one), the
    model run on ``threads`` threads. Returns the counts of convolutions rounded and images used."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    buf = bytearray(fp32.read_bytes())
    model = fu.read_model(str(fp32))
    graph = model.subgraphs[0]
    convs = []  # (input tensor, weight tensor, kernel h, w, stride, dilation, SAME padding)
    for op in graph.operators:
        kind = fu.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
        if getattr(kind, "name", kind) != "CONV_2D" or not rounds(fu.get_op_scope(op, graph.tensors)):
            continue
        opt = op.builtinOptions
        wt, xt = graph.tensors[op.inputs[1]], graph.tensors[op.inputs[0]]
        if wt.buffer <= 0 or wt.type != 0 or len(wt.shape) != 4 or wt.shape[3] != xt.shape[-1]:
            continue  # weights computed at run time, not float32, or a grouped convolution: left as they are
        _, kh, kw, _ = wt.shape
        convs.append((op.inputs[0], op.inputs[1], kh, kw, (opt.strideH, opt.strideW),
                      (opt.dilationHFactor, opt.dilationWFactor), opt.padding == schema.Padding.SAME))
    if not convs:
        out.write_bytes(bytes(buf))
        return {"convolutions": 0, "images": 0}
    interp = Interpreter(model_path=str(fp32), experimental_preserve_all_tensors=True, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    nchw = int(inp["shape"][1]) == 3
    hs: dict[int, np.ndarray] = {}
    n = 0
    for x in images:
        interp.set_tensor(inp["index"], np.ascontiguousarray(x if nchw else x.transpose(0, 2, 3, 1), np.float32))
        interp.invoke()
        n += 1
        for t_in, _, kh, kw, stride, dil, same in convs:
            cols = patches(interp.get_tensor(t_in)[0], kh, kw, stride, dil, same)
            h = cols.T @ cols
            hs[t_in] = hs[t_in] + h if t_in in hs else h.astype(np.float64)
    # the weights' bytes inside the flatbuffer: rewritten in place, so nothing else in the file moves
    root = schema.Model.GetRootAs(buf, 0)
    sub = root.Subgraphs(0)
    for t_in, t_w, *_ in convs:
        shape = graph.tensors[t_w].shape
        b = root.Buffers(sub.Tensors(t_w).Buffer())
        if b.Offset() > 1:  # a large model's weights after the flatbuffer, at an offset from the file's start
            view = np.frombuffer(buf, np.float32, count=int(np.prod(shape)), offset=b.Offset())
        else:
            view = b.DataAsNumpy().view(np.float32)
        w = view.reshape(shape)
        q = gptq_round(w.reshape(w.shape[0], -1), hs[t_in] / max(n, 1))
        view[:] = q.astype(np.float32).ravel()
    out.write_bytes(bytes(buf))
    return {"convolutions": len(convs), "images": n}


def name_filter(keep_float: list[str], kept_types: set[str]) -> Callable[[str], bool]:
    """Accept the op names (CONV_2D) that no float-scope pattern matches: the convolutions stored in int8."""
    pats = [re.compile(p) for p in keep_float]
    return lambda name: "CONV_2D" not in kept_types and not any(p.search(name) for p in pats)
