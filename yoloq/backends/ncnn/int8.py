"""ncnn's INT8 model written by yoloq: the calibration table's scales and the int8 weights, in ncnn's own file formats.

ncnn's ``ncnn2table`` and ``ncnn2int8`` are in no wheel; what they do is small and documented, so yoloq does it
itself on the FP32 ``.param``/``.bin`` that pnnx wrote, with ncnn's own Python runtime reading the activations:

- **weights**: per output channel (per group for a depthwise convolution), symmetric, scale = qmax / the channel's
  largest magnitude, as ``ncnn2table`` computes it: qmax 127, and 31 (6 bits) for 3x3 stride-1 convolutions, whose
  int8 Winograd F(4,3) kernels need 6-bit weights (``ncnn2table``'s rule). Rounded as ncnn's ``float2int8`` does
  (half away from zero, clamped to +-127), unless a caller gives its own integers (learned rounding);
- **activations**: each convolution's input, per tensor, symmetric, from the FP32 model on calibration images:
  ``kl`` (ncnn2table's entropy calibration, 2048 bins), ``aciq`` (its Gaussian clip, weights clipped too), ``max``
  (no clipping);
- **the file**: each quantized convolution gets ``8=`` (``int8_scale_term``) in the ``.param`` and, in the ``.bin``,
  its weights as int8 behind ncnn's int8 tag, then its bias, weight scales and input scale, as ``ncnn2int8`` writes
  them. Everything else is copied byte for byte;
- **centered inputs** (optional): a ``BinaryOp`` and a ``Padding`` before a convolution whose input is one-sided,
  and its bias corrected (:func:`centered_layers`), so ncnn's symmetric int8 spends all its levels on the range.

ncnn quantizes FP32 weights itself when a layer has scales but float weights (:func:`write` with ``int8=False``), so
the two forms check each other: same scales, same outputs.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.errors import ExportError

PARAM, BIN = "model.ncnn.param", "model.ncnn.bin"
CONVS = ("Convolution", "ConvolutionDepthWise")
TAG_INT8, TAG_FP16 = 0x000D4B38, 0x01306B47
METHODS = ("kl", "aciq", "max")  # activation calibration (yoloq.backends.ncnn.calibration)


@dataclass
class Layer:
    """One line of an ncnn ``.param`` and the bytes of its weights in the ``.bin``."""

    kind: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[str, str]
    line: str
    chunk: bytes = b""
    weight: np.ndarray | None = None  # float32 weights of a convolution, [out (or group), -1]
    bias: np.ndarray | None = None

    def p(self, key: int, default: int = 0) -> int:
        """An integer parameter of the layer."""
        return int(float(self.params.get(str(key), default)))

    @property
    def winograd43(self) -> bool:
        """A 3x3 stride-1 undilated convolution: ncnn computes it in int8 by Winograd F(4,3), which needs 6-bit
        weights."""
        kw, kh = self.p(1), self.p(11, self.p(1))
        sw, sh = self.p(3, 1), self.p(13, self.p(3, 1))
        dw, dh = self.p(2, 1), self.p(12, self.p(2, 1))
        return self.kind == "Convolution" and (kw, kh, sw, sh, dw, dh) == (3, 3, 1, 1, 1, 1)

    def kernel(self) -> tuple[int, int, int, int, int, int, int, int, int, int]:
        """kw, kh, stride w/h, dilation w/h, pad left/right/top/bottom."""
        kw = self.p(1)
        pl = self.p(4)
        pt = self.p(14, pl)
        return (kw, self.p(11, kw), self.p(3, 1), self.p(13, self.p(3, 1)), self.p(2, 1), self.p(12, self.p(2, 1)),
                pl, self.p(15, pl), pt, self.p(16, pt))


@dataclass
class Model:
    """An FP32 ncnn model read from a folder: its layers in order and the two header lines."""

    header: list[str]
    layers: list[Layer] = field(default_factory=list)

    @property
    def convs(self) -> list[Layer]:
        """The convolution layers, in the order the model runs them."""
        return [x for x in self.layers if x.kind in CONVS]

    @property
    def input(self) -> str:
        """The input blob."""
        return next(x.tops[0] for x in self.layers if x.kind == "Input")

    @property
    def output(self) -> str:
        """The last layer's output blob (the raw head output)."""
        return self.layers[-1].tops[0]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ExportError("the ncnn .bin ends before its .param says: not an FP32 pnnx export")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def floats(self, n: int) -> np.ndarray:
        return np.frombuffer(self.raw(4 * n), np.float32).copy()

    def tagged(self, n: int) -> np.ndarray:
        """ncnn's ``ModelBin::load(n, 0)``: a 4-byte tag, then float32 (tag 0), fp16 or int8 data."""
        tag = struct.unpack("<I", self.raw(4))[0]
        if tag == 0:
            return self.floats(n)
        if tag == TAG_FP16:
            return np.frombuffer(self.raw(-(-2 * n // 4) * 4)[:2 * n], np.float16).astype(np.float32)
        raise ExportError(f"an ncnn weight blob tagged {tag:#x} (already quantized): give yoloq an FP32 export")


def _memory_count(layer: Layer) -> int:
    dims = [layer.p(k) for k in (0, 1, 11, 2)]
    return int(np.prod([d for d in dims if d])) if any(dims) else 1


def layers_of(param: Path) -> list[Layer]:
    """The layers of an ncnn ``.param`` file, in order (without their weights)."""
    layers = []
    for line in Path(param).read_text().split("\n")[2:]:
        f = line.split()
        if len(f) < 4:
            continue
        nb, nt = int(f[2]), int(f[3])
        blobs = f[4:4 + nb + nt]
        params = dict(kv.split("=", 1) for kv in f[4 + nb + nt:] if "=" in kv)
        layers.append(Layer(f[0], f[1], blobs[:nb], blobs[nb:], params, line))
    return layers


def read(folder: Path) -> Model:
    """Read an FP32 (or FP16-stored) ncnn model, keeping each layer's weight bytes.

    Raises:
        ExportError: When the ``.bin`` does not match the ``.param`` or a layer's weights cannot be read.
    """
    model = Model((Path(folder) / PARAM).read_text().split("\n")[:2])
    r = _Reader((Path(folder) / BIN).read_bytes())
    for layer in layers_of(Path(folder) / PARAM):
        start = r.pos
        if layer.kind in CONVS:
            if layer.p(8):
                raise ExportError(f"ncnn layer {layer.name} is already int8: give yoloq an FP32 export")
            if layer.p(19):
                raise ExportError(f"ncnn layer {layer.name} has dynamic weights: not quantized by yoloq")
            out = layer.p(0)
            groups = layer.p(7, 1) if layer.kind == "ConvolutionDepthWise" else 1
            layer.weight = r.tagged(layer.p(6)).reshape(groups if groups > 1 else out, -1)
            layer.bias = r.floats(out) if layer.p(5) else None
        elif layer.kind == "InnerProduct":
            r.tagged(layer.p(2))
            if layer.p(1):
                r.floats(layer.p(0))
        elif layer.kind == "MemoryData":
            r.floats(_memory_count(layer))
        elif layer.kind in ("BatchNorm", "Scale", "PReLU", "Deconvolution", "DeconvolutionDepthWise", "Embed",
                            "LayerNorm", "GroupNorm", "MultiHeadAttention", "Gemm", "RNN", "LSTM", "GRU"):
            raise ExportError(f"ncnn layer type {layer.kind} ({layer.name}) carries weights yoloq's int8 writer "
                              f"does not read; export the model again (pnnx folds it for YOLO detectors)")
        layer.chunk = r.data[start:r.pos]
        model.layers.append(layer)
    if r.pos != len(r.data):
        raise ExportError(f"the ncnn .bin holds {len(r.data) - r.pos} bytes its .param does not account for")
    return model


def qmax(layer: Layer, bits_3x3: int) -> int:
    """The largest int8 weight of a layer: 127, or ``2 ** (bits_3x3 - 1) - 1`` for a Winograd F(4,3) layer."""
    return 2 ** (bits_3x3 - 1) - 1 if layer.winograd43 else 127


def aciq_clip(absmax: float, n: int, bits: int = 8) -> float:
    """ncnn2table's ACIQ Gaussian clip of a tensor of ``n`` values whose largest magnitude is ``absmax``."""
    alpha = (0, 1.71063519, 2.15159277, 2.55913646, 2.93620062, 3.28691474, 3.6151146, 3.92403714)
    const = (0.5 * 0.35) * (1 + math.sqrt(math.pi * math.log(4)))
    return float(alpha[bits - 1] * (absmax * 2 * const) / math.sqrt(2 * math.log(max(n, 2))))


def weight_scales(layer: Layer, method: str, bits_3x3: int) -> np.ndarray:
    """Per-channel weight scales as ncnn2table computes them (ACIQ clips the weights too)."""
    w = layer.weight
    absmax = np.abs(w).max(axis=1).astype(np.float32)
    top = qmax(layer, bits_3x3)
    if method == "aciq":
        bits = bits_3x3 if layer.winograd43 else 8
        thr = np.array([aciq_clip(float(a), w.shape[1], bits) for a in absmax], np.float32)
        return np.where(thr > 0, np.float32(top) / np.maximum(thr, 1e-30), 1.0).astype(np.float32)
    return np.where(absmax > 0, np.float32(top) / np.maximum(absmax, 1e-30), 1.0).astype(np.float32)


def round_int8(v: np.ndarray) -> np.ndarray:
    """ncnn's ``float2int8``: round half away from zero, clamp to [-127, 127]."""
    v = np.asarray(v, np.float32)
    return np.clip(np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)), -127, 127).astype(np.int8)


def quantize_weights(layer: Layer, scales: np.ndarray) -> np.ndarray:
    """The layer's weights in int8 by rounding to nearest (ncnn2int8's conversion), [out (or group), -1]."""
    return round_int8(layer.weight * scales[:, None].astype(np.float32))


OPTIONS = "ncnn-options.json"  # runtime options the model needs, beside it (read by yoloq and by bundles)


def runtime_options(folder: Path) -> dict[str, Any]:
    """The ncnn options a model folder asks for (``use_winograd43_convolution: false`` for 8-bit 3x3 weights run by
    Winograd F(2,3); a file whose layers carry ncnn's featmask needs none)."""
    import json

    f = Path(folder) / OPTIONS
    return json.loads(f.read_text()) if f.is_file() else {}


NO_WINOGRAD = 64  # ncnn's per-layer featmask (param 31), bit 6: this layer never runs a Winograd kernel


def _param_line(kind: str, name: str, bottoms: list[str], tops: list[str], params: dict[str, str]) -> str:
    return " ".join([f"{kind:<24}", f"{name:<24}", str(len(bottoms)), str(len(tops)), *bottoms, *tops,
                     *(f"{k}={v}" for k, v in params.items())])


def centered_layers(layer: Layer, center: float) -> tuple[list[str], Layer]:
    """The lines that shift ``layer``'s input by ``-center`` before ncnn quantizes it (a ``BinaryOp`` adding a
    scalar) and pad it explicitly with the shifted zero (a ``Padding`` whose value is ``-center``, so the border
    reads what zero padding read), and the convolution reading the result with no padding of its own. Exact in
    float: the caller adds the weights' sum times ``center`` to the bias (which the convolution gets if it had
    none)."""
    shifted, lines = f"{layer.bottoms[0]}_yc", []
    lines.append(_param_line("BinaryOp", f"{layer.name}_center", [layer.bottoms[0]], [shifted],
                             {"0": "0", "1": "1", "2": f"{-center:.9e}"}))
    _kw, _kh, _sw, _sh, _dw, _dh, pl, pr, pt, pb = layer.kernel()
    params = {k: v for k, v in layer.params.items() if k not in ("4", "14", "15", "16", "18")} | {"5": "1"}
    if pl or pr or pt or pb:
        padded = f"{layer.bottoms[0]}_yp"
        lines.append(_param_line("Padding", f"{layer.name}_pad", [shifted], [padded],
                                 {"0": str(pt), "1": str(pb), "2": str(pl), "3": str(pr), "4": "0",
                                  "5": f"{-center:.9e}"}))
        shifted = padded
    conv = Layer(layer.kind, layer.name, [shifted], layer.tops, params, "")
    conv.line = _param_line(conv.kind, conv.name, conv.bottoms, conv.tops, params)
    return lines, conv


def centered_bias(layer: Layer, q: np.ndarray, ws: np.ndarray, bias: np.ndarray, center: float) -> np.ndarray:
    """The bias that undoes an input shifted by ``-center``: each output channel's int8 weights, as ncnn scales
    them, summed over its inputs and taps, times ``center``."""
    wq = q.astype(np.float64).reshape(len(ws), -1) / ws.astype(np.float64)[:, None]
    return (bias.astype(np.float64) + wq.reshape(len(bias), -1).sum(1) * center).astype(np.float32)


def write(model: Model, out: Path, quant: dict[str, tuple[Any, ...]],
          int8: bool = True, options: dict[str, Any] | None = None, gemm: frozenset[str] = frozenset(),
          scaled: bool = True) -> dict[str, Any]:
    """Write ``model`` to ``out`` with the convolutions in ``quant`` (name -> weight scales, input scale, int8
    weights or None for rounding to nearest[, a learned bias or None[, the input's center]]) in int8; ``int8=False``
    keeps their weights float32 with the same scales (ncnn quantizes them when it loads). A nonzero center shifts
    the convolution's input before ncnn quantizes it (:func:`centered_layers`), so a one-sided input (a SiLU's)
    spends all 255 levels. The layers named in ``gemm`` carry ncnn's featmask that turns its Winograd kernels off for
    them alone (its int8 GEMM runs them: exact for 8-bit weights), in the file itself, so any program that loads it
    runs them so. ``scaled=False`` (with ``int8=False``) writes no scales: the same graph and weights run in float,
    which checks the graph's own arithmetic. Returns sizes."""
    out.mkdir(parents=True, exist_ok=True)
    lines, chunks, added = list(model.header[:1]), [], 0
    for layer in model.layers:
        if layer.name not in quant:
            lines.append(layer.line)
            chunks.append(layer.chunk)
            continue
        ws, act, q, *rest = quant[layer.name]
        bias = rest[0] if rest and rest[0] is not None else layer.bias  # a learned bias (distillation)
        center = float(rest[1]) if len(rest) > 1 and rest[1] else 0.0
        given = q is not None
        q = np.asarray(q, np.int8) if given else quantize_weights(layer, ws)
        line = layer.line
        if center:
            pre, conv = centered_layers(layer, center)
            lines += pre
            added += len(pre)
            line = conv.line
            bias = centered_bias(layer, q, ws, np.zeros(layer.p(0), np.float32) if bias is None else bias, center)
        term = 2 if layer.kind == "Convolution" else 1
        lines.append(line + (f" 8={term}" if scaled else "") + (f" 31={NO_WINOGRAD}" if layer.name in gemm else ""))
        if int8:
            raw = q.astype(np.int8).tobytes()
            body = struct.pack("<I", TAG_INT8) + raw + b"\0" * (-len(raw) % 4)
        else:
            body = struct.pack("<I", 0) + (q.astype(np.float32) / ws[:, None] if given else
                                           layer.weight).astype(np.float32).tobytes()
        if bias is not None:
            body += np.asarray(bias, np.float32).tobytes()
        if scaled:
            body += np.asarray(ws, np.float32).tobytes() + np.float32(act).tobytes()
        chunks.append(body)
    n_layers, n_blobs = (int(v) for v in model.header[1].split())
    lines.insert(1, f"{n_layers + added} {n_blobs + added}")
    tmp_p, tmp_b = out / (PARAM + ".partial"), out / (BIN + ".partial")
    tmp_p.write_text("\n".join(lines).rstrip("\n") + "\n")
    tmp_b.write_bytes(b"".join(chunks))
    tmp_p.replace(out / PARAM)
    tmp_b.replace(out / BIN)
    if options:
        import json

        (out / OPTIONS).write_text(json.dumps(options, sort_keys=True) + "\n")
    else:
        (out / OPTIONS).unlink(missing_ok=True)
    return {"int8_layers": len(quant), "bin_bytes": (out / BIN).stat().st_size}
