"""ncnn2table's activation calibration, computed by yoloq with ncnn's own Python runtime: each convolution input's
statistics over calibration images (the largest magnitude, then a 2048-bin histogram up to it) and the scales that
KL divergence, ACIQ or the maximum give, as ncnn2table computes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from yoloq.backends.ncnn.int8 import BIN, METHODS, PARAM, Layer, Model, aciq_clip, runtime_options
from yoloq.errors import ExportError
from yoloq.progress import bar

BINS, TARGET_BIN = 2048, 128  # ncnn2table's KL histogram and its 7-bit target


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
    low: dict[str, float] = field(default_factory=dict)  # each input's smallest and largest value (centered inputs)
    high: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    hist: dict[str, np.ndarray] = field(default_factory=dict)


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

    key = hashlib.sha256(b"stats-v2" + (Path(folder) / BIN).read_bytes())
    for x in images:
        key.update(np.ascontiguousarray(x, np.float32).tobytes())
    hit = Path(cache) / f"ncnn-stats-{key.hexdigest()[:24]}.pkl" if cache else None
    if hit is not None and hit.is_file():
        return pickle.loads(hit.read_bytes())  # noqa: S301 - yoloq's own cache file
    names = list(dict.fromkeys(c.bottoms[0] for c in model.convs))
    st = Stats()

    def count(name: str, a: np.ndarray) -> None:
        st.absmax[name] = max(st.absmax.get(name, 0.0), float(np.abs(a).max()))
        st.low[name] = min(st.low.get(name, 0.0), float(a.min()))
        st.high[name] = max(st.high.get(name, 0.0), float(a.max()))
        st.count[name] = a.size

    def histogram(name: str, a: np.ndarray) -> None:
        top = st.absmax[name]
        v = np.abs(a[a != 0]).astype(np.float32)
        idx = np.minimum((v / np.float32(top) * BINS).astype(np.int64), BINS - 1) if top > 0 else v.astype(int)
        st.hist[name] = st.hist.get(name, 0) + np.bincount(idx, minlength=BINS)

    n = len(images)  # two passes over every image: a bar each, as a large calibration pool takes minutes
    blobs(folder, names, bar(images, f"  calibration: each input's largest magnitude ({n} images)"), threads, count)
    blobs(folder, names, bar(images, f"  calibration: histograms up to it ({n} images)"), threads, histogram)
    if hit is not None:
        hit.parent.mkdir(parents=True, exist_ok=True)
        tmp = hit.with_suffix(".partial")
        tmp.write_bytes(pickle.dumps(st))
        tmp.replace(hit)
    return st


CENTER_GAIN = 0.9  # an input is centered only where that shrinks its threshold to under 90% of its largest magnitude


def centers(st: Stats, model: Model, layers: list[Layer]) -> dict[str, tuple[float, float]]:
    """Each convolution's centered input (``centered_inputs``), from the calibration's :func:`statistics`: the
    midpoint of its calibrated range, which the written model subtracts before ncnn quantizes it, and its scale, 127
    / half the range (no clipping). A
    convolution whose input is already about symmetric (or whose padding ncnn computes itself) gets ``(0, 127 /
    largest magnitude)``: nothing to gain from the extra layers. So does one reading the image: ncnn would shift the
    caller's input buffer in place (seen to crash it)."""
    out = {}
    for c in layers:
        blob = c.bottoms[0]
        lo, hi, top = st.low.get(blob, 0.0), st.high.get(blob, 0.0), st.absmax.get(blob, 0.0)
        half = (hi - lo) / 2
        if top <= 0 or half >= CENTER_GAIN * top or min(c.kernel()[6:]) < 0 or model.input in c.bottoms:
            out[c.name] = (0.0, 127.0 / top if top > 0 else 1.0)
        else:
            out[c.name] = ((hi + lo) / 2, 127.0 / half)
    return out


def calibrate(folder: Path, model: Model, images: list[np.ndarray], method: str, threads: int,
              layers: list[Layer] | None = None, cache: Path | None = None) -> dict[str, float]:
    """Each convolution's input scale (127 / threshold) by ``method`` over ``images``, as ncnn2table computes it."""
    return scales(statistics(folder, model, images, threads, cache), model, method, layers)


def scales(st: Stats, model: Model, method: str, layers: list[Layer] | None = None) -> dict[str, float]:
    """Each convolution's input scale (127 / threshold) by ``method`` from the calibration's :func:`statistics`."""
    if method not in METHODS:
        raise ExportError(f"ncnn activation method {method!r}: yoloq computes {', '.join(METHODS)}")
    thresholds: dict[str, float] = {}
    out = {}
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
        out[c.name] = 127.0 / thr if thr > 0 else 1.0
    return out
