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
  them. Everything else is copied byte for byte.

ncnn quantizes FP32 weights itself when a layer has scales but float weights (:func:`write` with ``int8=False``), so
the two forms check each other: same scales, same outputs.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from yoloq.errors import ExportError

PARAM, BIN = "model.ncnn.param", "model.ncnn.bin"
CONVS = ("Convolution", "ConvolutionDepthWise")
TAG_INT8, TAG_FP16 = 0x000D4B38, 0x01306B47
BINS, TARGET_BIN = 2048, 128  # ncnn2table's KL histogram and its 7-bit target
METHODS = ("kl", "aciq", "max")


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


def read(folder: Path) -> Model:
    """Read an FP32 (or FP16-stored) ncnn model, keeping each layer's weight bytes.

    Raises:
        ExportError: When the ``.bin`` does not match the ``.param`` or a layer's weights cannot be read.
    """
    lines = (Path(folder) / PARAM).read_text().split("\n")
    model = Model(lines[:2])
    r = _Reader((Path(folder) / BIN).read_bytes())
    for line in lines[2:]:
        f = line.split()
        if len(f) < 4:
            continue
        nb, nt = int(f[2]), int(f[3])
        blobs = f[4:4 + nb + nt]
        params = dict(kv.split("=", 1) for kv in f[4 + nb + nt:] if "=" in kv)
        layer = Layer(f[0], f[1], blobs[:nb], blobs[nb:], params, line)
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


def kl_threshold(hist: np.ndarray) -> int:
    """ncnn2table's KL search over a 2048-bin histogram of magnitudes: the bin count to keep (>= 128)."""
    total = hist.sum()
    normed = (hist / total).astype(np.float32) if total else np.zeros(BINS, np.float32)
    eps = np.float32(0.0001)
    best, best_kl = TARGET_BIN, float("inf")
    for t in range(TARGET_BIN, BINS):
        clip = normed[:t] + eps
        clip[t - 1] += normed[t:].sum()
        per = t / TARGET_BIN
        # each of the 128 target bins averages the (fractional) source bins it covers; spread back the same way
        edges = np.arange(TARGET_BIN + 1) * per
        cum = np.concatenate([[0.0], np.cumsum(normed[:t], dtype=np.float64)])
        pos = np.arange(t + 1)

        def mass(x: np.ndarray) -> np.ndarray:
            i = np.minimum(np.floor(x).astype(int), t - 1)
            return cum[i] + (x - i) * normed[np.minimum(i, t - 1)]

        q = (mass(edges[1:]) - mass(edges[:-1])) / per
        owner = np.minimum((pos[:-1] / per).astype(int), TARGET_BIN - 1)
        lo, hi = pos[:-1], pos[1:]
        expand = np.full(t, eps, np.float64)
        # a source bin split between two target bins takes a share of each
        a = owner
        b = np.minimum(((hi - 1e-9) / per).astype(int), TARGET_BIN - 1)
        split = edges[np.minimum(a + 1, TARGET_BIN)]
        share_a = np.where(b > a, split - lo, 1.0)
        expand += share_a * q[a] + np.where(b > a, (hi - split) * q[b], 0.0)
        kl = float(np.sum(clip * np.log(clip / expand)))
        if kl < best_kl:
            best_kl, best = kl, t
    return best


@dataclass
class Stats:
    """Per-convolution input statistics over calibration images."""

    absmax: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    hist: dict[str, np.ndarray] = field(default_factory=dict)


OPTIONS = "ncnn-options.json"  # runtime options the model needs, beside it (read by yoloq and by bundles)


def runtime_options(folder: Path) -> dict[str, Any]:
    """The ncnn options a model folder asks for (``use_winograd43_convolution: false`` for 8-bit 3x3 weights)."""
    import json

    f = Path(folder) / OPTIONS
    return json.loads(f.read_text()) if f.is_file() else {}


def _net(folder: Path, threads: int, int8_inference: bool = False) -> Any:
    import ncnn

    net = ncnn.Net()
    net.opt.num_threads = threads
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = False
    net.opt.use_int8_inference = int8_inference
    for k, v in runtime_options(folder).items():
        setattr(net.opt, k, v)
    if net.load_param(str(folder / PARAM)) != 0 or net.load_model(str(folder / BIN)) != 0:
        raise ExportError(f"ncnn could not load {folder / PARAM}")
    return net


def blobs(folder: Path, names: list[str], images: Iterable[np.ndarray], threads: int,
          each: Callable[[str, np.ndarray], None], int8_inference: bool = False) -> int:
    """Run the model on ``images`` (NCHW batches of one) and hand every named blob ([C, H, W]) to ``each``;
    returns the number of images."""
    import ncnn

    model = read_header_io(folder)
    net = _net(folder, threads, int8_inference)
    n = 0
    for x in images:
        ex = net.create_extractor()
        ex.input(model[0], ncnn.Mat(np.ascontiguousarray(x[0], np.float32)))
        for name in names:
            ret, m = ex.extract(name)
            if ret != 0:
                raise ExportError(f"ncnn could not compute blob {name} ({ret})")
            each(name, np.array(m, np.float32))
        n += 1
    return n


def read_header_io(folder: Path) -> tuple[str, str]:
    """The input and output blob names of an ncnn model."""
    inp, out = "", ""
    for line in (Path(folder) / PARAM).read_text().split("\n")[2:]:
        f = line.split()
        if len(f) < 4:
            continue
        tops = f[4 + int(f[2]):4 + int(f[2]) + int(f[3])]
        if f[0] == "Input":
            inp = tops[0]
        out = tops[0] if tops else out
    return inp, out


def statistics(folder: Path, model: Model, images: list[np.ndarray], threads: int,
               cache: Path | None = None) -> Stats:
    """Every convolution input's largest magnitude, size and 2048-bin magnitude histogram over ``images`` (two
    passes, as ncnn2table: the maximum, then the histogram up to it); kept in ``cache`` (a folder) under a hash of
    the model and the images, so candidates that share them calibrate once."""
    import hashlib
    import pickle

    key = hashlib.sha256((Path(folder) / BIN).read_bytes())
    for x in images:
        key.update(np.ascontiguousarray(x, np.float32).tobytes())
    hit = Path(cache) / f"ncnn-stats-{key.hexdigest()[:24]}.pkl" if cache else None
    if hit is not None and hit.is_file():
        return pickle.loads(hit.read_bytes())  # noqa: S301 - yoloq's own cache file
    names = list(dict.fromkeys(c.bottoms[0] for c in model.convs))
    st = Stats()

    def count(name: str, a: np.ndarray) -> None:
        st.absmax[name] = max(st.absmax.get(name, 0.0), float(np.abs(a).max()))
        st.count[name] = a.size

    def histogram(name: str, a: np.ndarray) -> None:
        top = st.absmax[name]
        v = np.abs(a[a != 0]).astype(np.float32)
        idx = np.minimum((v / np.float32(top) * BINS).astype(np.int64), BINS - 1) if top > 0 else v.astype(int)
        st.hist[name] = st.hist.get(name, 0) + np.bincount(idx, minlength=BINS)

    blobs(folder, names, images, threads, count)
    blobs(folder, names, images, threads, histogram)
    if hit is not None:
        hit.parent.mkdir(parents=True, exist_ok=True)
        tmp = hit.with_suffix(".partial")
        tmp.write_bytes(pickle.dumps(st))
        tmp.replace(hit)
    return st


def calibrate(folder: Path, model: Model, images: list[np.ndarray], method: str, threads: int,
              layers: list[Layer] | None = None, cache: Path | None = None) -> dict[str, float]:
    """Each convolution's input scale (127 / threshold) by ``method`` over ``images``, as ncnn2table computes it."""
    if method not in METHODS:
        raise ExportError(f"ncnn activation method {method!r}: yoloq computes {', '.join(METHODS)}")
    st = statistics(folder, model, images, threads, cache)
    thresholds: dict[str, float] = {}
    scales = {}
    for c in (layers if layers is not None else model.convs):
        blob = c.bottoms[0]
        if blob not in thresholds:
            top = st.absmax.get(blob, 0.0)
            if method == "max":
                thresholds[blob] = top
            elif method == "aciq":
                thresholds[blob] = aciq_clip(top, st.count.get(blob, 1))
            else:
                thresholds[blob] = (kl_threshold(st.hist[blob]) + 0.5) * top / BINS if blob in st.hist else top
        thr = thresholds[blob]
        scales[c.name] = 127.0 / thr if thr > 0 else 1.0
    return scales


def write(model: Model, out: Path, quant: dict[str, tuple[Any, ...]],
          int8: bool = True, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``model`` to ``out`` with the convolutions in ``quant`` (name -> weight scales, input scale, int8
    weights or None for rounding to nearest[, a learned bias]) in int8; ``int8=False`` keeps their weights float32 with the same
    scales (ncnn quantizes them when it loads). Returns sizes."""
    out.mkdir(parents=True, exist_ok=True)
    lines, chunks = list(model.header), []
    for layer in model.layers:
        if layer.name not in quant:
            lines.append(layer.line)
            chunks.append(layer.chunk)
            continue
        ws, act, q, *rest = quant[layer.name]
        bias = rest[0] if rest and rest[0] is not None else layer.bias  # a learned bias (distillation)
        term = 2 if layer.kind == "Convolution" else 1
        lines.append(f"{layer.line} 8={term}")
        if int8:
            q = quantize_weights(layer, ws) if q is None else np.asarray(q, np.int8)
            raw = q.astype(np.int8).tobytes()
            body = struct.pack("<I", TAG_INT8) + raw + b"\0" * (-len(raw) % 4)
        else:
            body = struct.pack("<I", 0) + (layer.weight if q is None else
                                           q.astype(np.float32) / ws[:, None]).astype(np.float32).tobytes()
        if layer.bias is not None:
            body += np.asarray(bias, np.float32).tobytes()
        body += np.asarray(ws, np.float32).tobytes() + np.float32(act).tobytes()
        chunks.append(body)
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
