"""Benchmark: how ncnn runs an INT8 model's 8-bit 3x3 convolutions, timed side by side with its FP32 model.

    python tests/bench_ncnn_kernels.py [RUN_DIR] [--variant ncnn-int8-aug] [--runs 30]

From one finished run's exports (RUN_DIR defaults to ``results/ncnn-recovery/<this machine>``): the variant's INT8
model in its two forms, with the same integers, (a) each 8-bit 3x3 stride-1 convolution marked to run ncnn's int8
GEMM (``int8_3x3_kernel: gemm``: featmask ``31=64`` in the ``.param``) and (b) ncnn's Winograd F(2,3), asked for
beside the file (``int8_3x3_kernel: winograd``: ``use_winograd43_convolution: false``), and (c) the run's ncnn FP32
model, round-robin in one process through yoloq's own ncnn runtime, on one calibration image at the run's size, with
the run's threads. Prints p50 ms, each against FP32, and whether (a) and (b) give the same output to the last bit.
Writes ``results/ncnn-kernels/<machine>/kernels.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from yoloq.artifacts import cached_artifact
from yoloq.backends.ncnn import int8
from yoloq.backends.ncnn.backend import NcnnRuntime
from yoloq.config import load_config
from yoloq.paths import shared_root
from yoloq.preprocess import prepare, read_image
from yoloq.provenance import describe, machine
from yoloq.records import write_atomic

MARK = f" 31={int8.NO_WINOGRAD}"


def _export(run: Path, variant: str) -> Path:
    folder = run / "artifacts" / variant
    manifest = folder / "artifact.json"
    art = cached_artifact(folder, json.loads(manifest.read_text())["key"]) if manifest.is_file() else None
    if art is None:
        sys.exit(f"no export of {variant} under {run / 'artifacts'}: run the config first")
    return Path(art.path)


def _forms(src: Path, tmp: Path) -> dict[str, Path]:
    """The INT8 model as GEMM-marked and as Winograd F(2,3) (the same .bin: the same integers)."""
    eight = {c.name for c in int8.layers_of(src / int8.PARAM) if c.winograd43 and "8" in c.params}
    out = {}
    for form in ("gemm", "winograd"):
        d = tmp / form
        d.mkdir()
        shutil.copy(src / int8.BIN, d / int8.BIN)
        lines = []
        for line in (src / int8.PARAM).read_text().splitlines():
            line = line.replace(MARK, "")
            name = line.split()[1] if len(line.split()) > 1 else ""
            lines.append(line + MARK if form == "gemm" and name in eight else line)
        (d / int8.PARAM).write_text("\n".join(lines) + "\n")
        if form == "winograd":
            (d / int8.OPTIONS).write_text(json.dumps({"use_winograd43_convolution": False}) + "\n")
        out[form] = d
    if not eight:
        sys.exit(f"{src} has no int8 3x3 stride-1 convolution: nothing to compare")
    return out


def main() -> int:
    m = machine()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?", default=Path("results/ncnn-recovery") / m["id"])
    ap.add_argument("--variant", default="ncnn-int8-aug")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    if not (args.run / "config.yaml").is_file():
        sys.exit(f"{args.run}: not a finished run folder (no config.yaml); run configs/ncnn-recovery.yaml first, or "
                 f"give the folder of a run with an NCNN INT8 variant")
    cfg = load_config(args.run / "config.yaml")
    threads = cfg.latency.threads
    image = sorted((shared_root() / "datasets" / "coco-mini" / "train2017").glob("*.jpg"))[0]
    x = prepare([read_image(image)], cfg.imgsz)[0]
    with tempfile.TemporaryDirectory(prefix="yoloq-ncnn-kernels-") as tmp:
        forms = _forms(_export(args.run, args.variant), Path(tmp))
        models = {"int8 GEMM (gemm)": NcnnRuntime(forms["gemm"], "int8", threads),
                  "int8 Winograd F(2,3) (winograd)": NcnnRuntime(forms["winograd"], "int8", threads),
                  "fp32": NcnnRuntime(_export(args.run, "ncnn-fp32"), "fp32", threads)}
        times: dict[str, list[float]] = {k: [] for k in models}
        outs = {k: r.predict(x) for k, r in models.items()}  # warm-up, and the outputs compared
        for _ in range(args.runs):
            for k, r in models.items():
                t0 = time.perf_counter()
                r.predict(x)
                times[k].append(time.perf_counter() - t0)
    p50 = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    same = bool(np.array_equal(outs["int8 GEMM (gemm)"], outs["int8 Winograd F(2,3) (winograd)"]))
    rows = [f"| {k} | {v:.1f} | {p50['fp32'] / v:.2f}x |" for k, v in p50.items()]
    text = "\n".join([
        f"# ncnn's kernels for 8-bit 3x3 weights: {args.variant} of {args.run}",
        "", f"Machine: {describe(m)} (`{m['id']}`). {args.runs} runs each, round-robin, {threads} threads, "
        f"one image at {cfg.imgsz}.", "",
        "| model | p50 ms | x fp32 |", "| --- | --- | --- |", *rows, "",
        f"GEMM and Winograd F(2,3) outputs equal to the last bit: {same}", ""])
    print(text)
    out = Path("results/ncnn-kernels") / m["id"]
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "kernels.md", text)
    write_atomic(out / "kernels.json", json.dumps({"machine": m, "run": str(args.run), "variant": args.variant,
                                                   "runs": args.runs, "threads": threads, "imgsz": cfg.imgsz,
                                                   "p50_ms": p50, "outputs_equal": same}, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
