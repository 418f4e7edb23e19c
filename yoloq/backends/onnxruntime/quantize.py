"""Static INT8 quantization with ``onnxruntime.quantization`` over yoloq's calibration images.

Histogram calibration (percentile, entropy) cannot bin a tensor that is (nearly) constant on the
first calibration images: numpy refuses ``Too many bins for data range`` (a random-init YOLO26's
SiLU sigmoid sits at 0.5 +- 1e-6), and a later outlier would stretch its tiny bins into millions.
When that happens, :func:`robust_ranges` calibrates again with ONNX Runtime's own calibrators: such
tensors take their range from MinMax (exact for a constant), every other tensor its histogram
range, and the variant's record lists the tensors treated so.

The percentile histograms are ONNX Runtime's, binned by :func:`bin_counts` after the first stride: the
same counts as its ``np.histogram`` with explicit edges (which sorts every value), in linear time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from yoloq.backends.onnxruntime.tensors import only, op_types, quantized_tensors
from yoloq.data.calibration import CalibrationSet
from yoloq.provenance import worker_threads
from yoloq.records import write_atomic


def calibration_reader(calibration: CalibrationSet, imgsz: int, input_name: str) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``calibration``'s images.

    It supports ``set_range`` so calibration can run in strides (bounded memory), and shows each pass over the
    images with its ETA.
    """
    from onnxruntime.quantization import CalibrationDataReader

    from yoloq.progress import Progress

    images = calibration.images

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._progress: Progress | None = None
            self.set_range(0, len(images))

        def __len__(self) -> int:
            return len(images)

        def set_range(self, start_index: int, end_index: int) -> None:
            if start_index == 0 or self._progress is None:  # a new pass over the images: progress with its ETA
                if self._progress is not None:
                    self._progress.close()
                self._progress = Progress("  calibration", len(images), "images")
            self._it = calibration.take_range(start_index, end_index).batches(imgsz)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            if x is not None and self._progress is not None:
                self._progress.update(1)
            return None if x is None else {input_name: x}

        def rewind(self) -> None:
            self.set_range(0, len(images))

    return Reader()


def prepare_model(fp32: Path, prep: Path) -> str:
    """ONNX Runtime's pre-processing for quantization (shape inference, folding); returns the input name."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
    return onnx.load(str(prep), load_external_data=False).graph.input[0].name


METHODS = ("minmax", "entropy", "percentile")

# The Q/DQ form TensorRT's explicit quantization reads (its "Working with Quantized Types"): Q/DQ
# nodes, symmetric int8 activations, symmetric per-channel int8 weights, bias left in float.
TENSORRT_QDQ = {"quant_format": "qdq", "activation_type": "int8", "per_channel": True, "quantize_bias": False}


def _method(options: Mapping[str, Any]) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[options["calibrate_method"]]


def quantize_file(prep: Path, out: Path, options: Mapping[str, Any], cache: Path,
                  exclude: list[str] | None = None, only: list[str] | None = None) -> None:
    """``quantize_static`` with a variant's options and the ranges :func:`collect_ranges` cached.

    Args:
        prep: The pre-processed FP32 model.
        out: Where the INT8 model goes.
        options: The variant's (resolved) options.
        cache: ONNX Runtime's calibration cache (ranges computed once, reused by every later call).
        exclude: Node names left in float.
        only: When given, quantize only these nodes.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    s8 = options["activation_type"] == "int8"
    extra: dict[str, Any] = {"ActivationSymmetric": s8, "QuantizeBias": options.get("quantize_bias", True)}
    quantize_static(str(prep), str(out), None,
                    quant_format=QuantFormat.QDQ if options["quant_format"] == "qdq" else QuantFormat.QOperator,
                    per_channel=options["per_channel"], reduce_range=bool(options.get("reduce_range")),
                    activation_type=QuantType.QInt8 if s8 else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=_method(options), nodes_to_exclude=exclude or [],
                    nodes_to_quantize=only or [], extra_options=extra, calibration_cache_path=str(cache))


def _settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """The calibrator's ``extra_options`` a variant sets (the rest are ONNX Runtime's defaults)."""
    extra: dict[str, Any] = {}
    if options.get("percentile") is not None:
        extra["percentile"] = float(options["percentile"])
    if options.get("symmetric_ranges") is not None:
        extra["symmetric"] = bool(options["symmetric_ranges"])
    return extra


def _calibrator(prep: Path, augmented: str, method: Any, options: Mapping[str, Any] | None = None,
                tensors: set[str] | None = None) -> Any:
    """ONNX Runtime's calibrator, made as ``quantize_static`` makes it (with the variant's percentile and
    range symmetry), for ``tensors`` only (None: every tensor it selects); a histogram method's tensors are
    binned on threads, one tensor per task, by ONNX Runtime's own code (so the same histograms)."""
    from concurrent.futures import ThreadPoolExecutor

    from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, create_calibrator

    with only(tensors):
        calibrator = create_calibrator(prep, op_types(), augmented_model_path=augmented, calibrate_method=method,
                                       extra_options=_settings(options or {}))
    if method == CalibrationMethod.MinMax:
        return calibrator

    class Collector(HistogramCollector):
        def collect(self, name_to_arr: dict[str, Any]) -> None:
            absolute = self.method == "percentile" and self.symmetric  # HistogramCollector.collect's choice
            one = self.collect_absolute_value if absolute else self.collect_value
            with ThreadPoolExecutor(worker_threads()) as pool:  # numpy releases the GIL while it bins
                list(pool.map(lambda item: one(dict([item])), name_to_arr.items()))

        def collect_absolute_value(self, name_to_arr: dict[str, Any]) -> None:
            """ONNX Runtime's histogram of |x|, tensor by tensor; each later stride binned in linear time, image by
            image (no copy of the stride's values)."""
            for tensor, arr in name_to_arr.items():
                if tensor not in self.histogram_dict:  # the first stride: num_bins over [0, max|x|], as ONNX Runtime
                    x = np.asarray(arr).ravel()
                    lo, hi = (np.nanmin(x), np.nanmax(x)) if x.size else (np.zeros((), x.dtype),) * 2
                    hist, edges = np.histogram(np.absolute(x), bins=self.num_bins)
                    self.histogram_dict[tensor] = (hist, edges.astype(x.dtype), lo, hi)
                    continue
                parts = [np.asarray(a).ravel() for a in (arr if isinstance(arr, list) else [arr])]
                lo = min((np.nanmin(a) for a in parts if a.size), default=np.zeros((), parts[0].dtype))
                hi = max((np.nanmax(a) for a in parts if a.size), default=np.zeros((), parts[0].dtype))
                old, edges, old_lo, old_hi = self.histogram_dict[tensor]
                top = max(abs(lo), abs(hi))  # max |x| (NaN ignored)
                if top > edges[-1]:  # more bins of the same width up to the new maximum, as ONNX Runtime adds them
                    width = edges[1] - edges[0]
                    edges = np.hstack((edges, np.arange(edges[-1] + width, top + width, width)))
                hist = sum(bin_counts(a, edges, absolute=True) for a in parts)
                hist[: len(old)] += old
                self.histogram_dict[tensor] = (hist, edges.astype(parts[0].dtype), min(old_lo, lo), max(old_hi, hi))

    calibrator.collector = Collector(method=calibrator.method, symmetric=calibrator.symmetric,
                                     num_bins=calibrator.num_bins, num_quantized_bins=calibrator.num_quantized_bins,
                                     percentile=calibrator.percentile, scenario=calibrator.scenario)
    return calibrator


def bin_counts(x: np.ndarray, edges: np.ndarray, absolute: bool = False, block: int = 1 << 16) -> np.ndarray:
    """``np.histogram(x, bins=edges)[0]`` (of ``|x|`` with ``absolute``) for (nearly) evenly spaced float32
    ``edges``, without sorting ``x``.

    Given explicit edges, numpy sorts every value: ONNX Runtime's percentile calibration does that for every
    tensor of every stride after the first, most of YOLO11n's INT8 export time (on amd-epyc-2c-792874, ~70% of
    208 s in the sort). Here, block by block (cache-sized), each value's bin comes from the spacing; a value
    that close to an edge (within the edges' own distance from an even grid plus float32 rounding) is settled
    by comparison with the edges themselves, until ``edges[i] <= x < edges[i + 1]`` (the last bin closed). So
    the counts are numpy's exactly; values outside the edges and NaN are not counted, as numpy.
    """
    n = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    if not float(hi) > float(lo):  # no width to divide by: numpy's own way
        return np.histogram(np.absolute(x) if absolute else x, bins=edges)[0]
    scale = np.float32(n / (float(hi) - float(lo)))
    grid = (edges.astype(np.float64) - float(lo)) * float(scale) - np.arange(n + 1)
    near = np.float32(np.abs(grid).max() + 3e-7 * n + 1e-3)  # in bins
    counts = np.zeros(n, np.intp)
    for start in range(0, x.size, block):
        b = np.absolute(x[start:start + block]) if absolute else x[start:start + block]
        if not (b.min() >= lo and b.max() <= hi):  # NaN fails both
            b = b[(b >= lo) & (b <= hi)]
        f = (b - lo) * scale
        i = np.minimum(f.astype(np.intp), n - 1)
        f -= i
        j = np.flatnonzero((f < near) | (f > 1 - near))
        while j.size:  # near an edge: moved by the edges themselves until none moves
            k, v = i[j], b[j]
            down, up = v < edges[k], (v >= edges[np.minimum(k + 1, n)]) & (k < n - 1)
            off = down | up
            i[j[off]] += up[off].astype(np.intp) - down[off]
            j = j[off]
        counts += np.bincount(i, minlength=n)
    return counts


def _collect(calibrator: Any, reader: Any, first: dict[str, tuple[float, float]] | None = None) -> Any:
    """Run ``reader``'s images through ``calibrator`` stride by stride (bounded memory), as
    ``quantize_static``'s ``CalibStridedMinMax`` does; ``first`` gets each tensor's range on the first stride."""
    n = len(reader)
    stride = _stride(n)
    for start in range(0, n, stride):
        reader.set_range(start, start + stride)
        calibrator.collect_data(reader)
        if first is not None and start == 0:  # what a histogram's first binning sees
            first.update({t: (float(np.min(d.lowest)), float(np.max(d.highest)))
                          for t, d in calibrator.compute_data().data.items()})
    return calibrator.compute_data()


def collect_ranges(prep: Path, reader: Any, options: Mapping[str, Any], cache: Path,
                   tensors: set[str] | None = None) -> dict[str, Any]:
    """Calibrate ``prep`` over ``reader``'s images and write the ranges of ``tensors`` (None: all) to ``cache``.

    Returns:
        What was done about tensors a histogram could not bin (empty when nothing was).
    """
    import tempfile

    from onnxruntime.quantization.calibrate import save_tensors_data

    try:
        with tempfile.TemporaryDirectory(prefix="yoloq-calib-") as tmp:
            save_tensors_data(_collect(_calibrator(prep, f"{tmp}/aug.onnx", _method(options), options, tensors),
                                       reader), cache)
        return {}
    except ValueError as e:
        if "bins" not in str(e) or options["calibrate_method"] == "minmax":
            raise
    bad = robust_ranges(prep, reader, options, cache, tensors)
    return {"minmax_ranges": bad, "why": f"{options['calibrate_method']} histograms cannot bin these "
                                         f"(nearly) constant tensors; their range is their min/max"}


def _stride(n: int, most: int = 16) -> int:
    """The largest divisor of ``n`` not above ``most`` (ONNX Runtime's strided MinMax needs one)."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def degenerate(lowest: float, highest: float) -> bool:
    """Whether a tensor's range cannot be binned into a histogram: not finite, ~0, or |x| nearly constant."""
    lo, hi = float(lowest), float(highest)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return True
    top = max(abs(lo), abs(hi))
    bottom = lo if lo >= 0 else (-hi if hi <= 0 else 0.0)
    return top < 1e-30 or (top - bottom) <= 1e-3 * top


def robust_ranges(prep: Path, reader: Any, options: Mapping[str, Any], cache: Path,
                  tensors: set[str] | None = None) -> list[str]:
    """Histogram ranges where a histogram can be made, MinMax ranges where it cannot, written to ``cache``.

    Returns:
        The tensors whose range came from MinMax (degenerate on the first calibration stride).
    """
    import tempfile

    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    method = _method(options)
    first: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="yoloq-calib-") as tmp:
        minmax = _collect(_calibrator(prep, f"{tmp}/minmax.onnx", CalibrationMethod.MinMax, tensors=tensors), reader,
                          first)
        bad = sorted(t for t, r in first.items() if degenerate(*r))
        hist = _calibrator(prep, f"{tmp}/hist.onnx", method, options, tensors)
        symmetric = hist.symmetric
        hist.tensors_to_calibrate = set(hist.tensors_to_calibrate) - set(bad)
        data = dict(_collect(hist, reader).data)
    for t in bad:
        lo, hi = float(np.min(minmax.data[t].lowest)), float(np.max(minmax.data[t].highest))
        if symmetric:
            lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
        data[t] = TensorData(lowest=np.float32(lo), highest=np.float32(hi))
    save_tensors_data(TensorsData(method, data), cache)
    return bad


def calibrate(fp32: Path, workdir: Path, calibration: CalibrationSet, imgsz: int, options: Mapping[str, Any],
              out: Path, exclude: list[str] | None = None, share: Path | None = None
              ) -> tuple[Path, Path, dict[str, Any]]:
    """Pre-process ``fp32``, calibrate it and quantize it into ``out``, keeping the ranges cached (and, with
    ``share``, kept in that folder for every variant with the same graph, images and range method).

    Returns:
        The pre-processed model and the range cache (callers delete them when done), and what was
        done about tensors a histogram could not bin (empty when nothing was).
    """
    prep, cache = workdir / "model_prep.onnx", workdir / "ranges.json"
    input_name = prepare_model(fp32, prep)
    cache.unlink(missing_ok=True)  # ranges of this calibration only
    # only the tensors this variant's int8 nodes read (accuracy control may quantize any node: all of them);
    # each tensor's histogram is its own, so ranges computed for other variants serve as they are
    want = quantized_tensors(prep, None if options.get("accuracy_control") else exclude)
    shared = _shared_ranges(fp32, share, calibration, imgsz, options) if share else None
    ranges: dict[str, Any] = {}
    robust: dict[str, Any] = {}
    if shared and shared.with_suffix(".json").is_file() and shared.with_suffix(".bad.json").is_file():
        ranges = json.loads(shared.with_suffix(".json").read_text())
        robust = json.loads(shared.with_suffix(".bad.json").read_text())
    missing = want - set(ranges.get("data", {}))
    if missing:  # scope-only variants whose tensors are all in the shared file skip calibration
        new = collect_ranges(prep, calibration_reader(calibration, imgsz, input_name), options, cache, missing)
        fresh = json.loads(cache.read_text())
        ranges = {**fresh, "data": {**ranges.get("data", {}), **fresh["data"]}}
        robust = _merged(robust, new)
        if shared:
            shared.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(shared.with_suffix(".bad.json"), json.dumps(robust))
            write_atomic(shared.with_suffix(".json"), json.dumps(ranges))
    if ranges:
        write_atomic(cache, json.dumps(ranges))
    else:  # no int8 node reads a tensor: an empty range table, in ONNX Runtime's own form
        from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

        save_tensors_data(TensorsData(_method(options), {}), cache)
    quantize_file(prep, out, options, cache, exclude)
    return prep, cache, robust


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Two calibrations' notes on tensors a histogram could not bin, as one."""
    if not new:
        return old
    if not old:
        return new
    return {**new, "minmax_ranges": sorted(set(old["minmax_ranges"]) | set(new["minmax_ranges"]))}


def _shared_ranges(fp32: Path, folder: Path, calibration: CalibrationSet, imgsz: int,
                   options: Mapping[str, Any]) -> Path:
    """Where the ranges of one FP32 graph, calibration list, input size and range method are kept for every
    variant of the run that shares them (variants that differ only in scope, format or bits reuse them)."""
    import hashlib

    key = {"graph": hashlib.sha256(fp32.read_bytes()).hexdigest(), "calibration": calibration.sha256, "imgsz": imgsz,
           "method": options["calibrate_method"], **_settings(options)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return folder / digest
