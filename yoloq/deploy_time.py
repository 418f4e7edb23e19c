"""Time the bundled detector on this device: the runtime, numpy and OpenCV only (no yoloq), yoloq's harness rules.

    python timing.py IMAGE_OR_FOLDER [...] [--threads 4] [--runs 100] [--seconds 10] [--out timing.json]

Images are decoded once before timing. Then ``--warmup`` untimed runs, then at least ``--runs`` timed runs and
``--seconds`` seconds, each end to end as yoloq times it (letterbox, inference, decoding and NMS at the deploy
threshold; decoding the image file excluded), with the stages apart. The CPU time other processes took meanwhile is
read from the OS (``/proc/stat``), so a figure says what disturbed it. One JSON describes the device and the
figures; ``yoloq report RUN_DIR --device-timings timing.json`` adds it to the run's records as this device's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predict import decode, letterbox, load_model  # noqa: E402 - the bundle's own pre/postprocessing and loader


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, or None where /proc/stat is missing."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return sum(f) - idle, sum(f)


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _device() -> dict:
    """What this device is: its board or CPU model, architecture, cores, system, Python."""
    board = cpu = None
    for f in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            board = Path(f).read_bytes().rstrip(b"\0").decode(errors="replace").strip()
            break
        except OSError:
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("model name", "Hardware", "CPU part") and val.strip():
                cpu = cpu or f"{key.strip()}: {val.strip()}"
    except OSError:
        pass
    return {"board": board, "cpu": cpu or platform.processor() or None, "arch": platform.machine(),
            "cores": os.cpu_count(), "system": platform.platform(), "python": platform.python_version()}


def _runtime_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for line in (HERE / "requirements.txt").read_text().split():
        name = line.split("==")[0].strip()
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _images(paths: list[str]) -> list[np.ndarray]:
    files = []
    for p in map(Path, paths):
        if not p.exists():
            raise SystemExit(f"timing: {p} not found (give images or folders of images)")
        files += sorted(x for x in p.iterdir() if x.suffix.lower() in (".jpg", ".jpeg", ".png")) if p.is_dir() else [p]
    imgs = [im for im in (cv2.imread(str(f), cv2.IMREAD_COLOR) for f in files) if im is not None]
    if not imgs:
        raise SystemExit(f"timing: no readable image in {' '.join(paths)}")
    return imgs


def main(argv: list[str] | None = None) -> int:
    meta = json.loads((HERE / "meta.json").read_text())
    ap = argparse.ArgumentParser(description=f"{meta['variant']}: time the detector on this device")
    ap.add_argument("images", nargs="+", help="images or folders of images (16 are enough)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=100, help="at least this many timed runs")
    ap.add_argument("--seconds", type=float, default=10.0, help="and at least this many seconds of them")
    ap.add_argument("--max-images", type=int, default=16)
    ap.add_argument("--device-name", help="how the report names this device (default: its board or CPU)")
    ap.add_argument("--emulated", action="store_true", help="this is an emulated CPU: its times are not the device's")
    ap.add_argument("--out", default="timing.json")
    args = ap.parse_args(argv)
    imgs = _images(args.images)[: args.max_images]
    model = load_model(HERE / meta["model_file"], args.threads)
    size, pad, conf = meta["input"]["size"], meta["letterbox"]["pad"], meta["thresholds"]["conf"]

    def once(img: np.ndarray) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        boxed, _ = letterbox(img, size, pad)
        x = np.ascontiguousarray(boxed[None, ..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        t1 = time.perf_counter()
        raw = model(x)
        t2 = time.perf_counter()
        decode(raw, meta, conf)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    for i in range(args.warmup):
        once(imgs[i % len(imgs)])
    rows, start, ticks0, own0 = [], time.perf_counter(), _cpu_ticks(), _own_cpu_s()
    while len(rows) < args.runs or time.perf_counter() - start < args.seconds:
        rows.append(once(imgs[len(rows) % len(imgs)]))
    wall, ticks1, own = time.perf_counter() - start, _cpu_ticks(), _own_cpu_s() - own0
    ms = np.asarray(rows) * 1000.0
    e2e = ms.sum(1)
    pct = {f"p{q}_ms": float(np.percentile(e2e, q)) for q in (50, 90, 99)}
    load = None
    if ticks0 and ticks1 and ticks1[1] > ticks0[1]:
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy = (ticks1[0] - ticks0[0]) / hz
        cores = (ticks1[1] - ticks0[1]) / hz
        load = {"others_share": round(max(0.0, busy - own) / cores, 4) if cores else None, "seconds": round(wall, 2)}
    device = _device()
    out = {"yoloq_timing": 1, "variant": meta["variant"], "key": meta.get("key"), "precision": meta["precision"],
           "model_file": meta["model_file"], "model_sha256": _sha256(HERE / meta["model_file"]),
           "device": device | {"name": args.device_name or device["board"] or device["cpu"] or device["arch"],
                               "emulated": bool(args.emulated)},
           "runtime": _runtime_versions(), "threads": args.threads, "batch": 1, "imgsz": size, "conf": conf,
           "warmup": args.warmup, "runs": len(rows), "seconds": round(wall, 2), **pct,
           "mean_ms": float(e2e.mean()), "min_ms": float(e2e.min()), "fps": float(len(rows) / (e2e.sum() / 1000)),
           "stages": {k: float(np.percentile(ms[:, i], 50)) for i, k in
                      enumerate(("preprocess_p50_ms", "inference_p50_ms", "postprocess_p50_ms"))},
           "outside_load": load, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.out).write_text(json.dumps(out, indent=1))
    flag = " (EMULATED: not the device's speed)" if args.emulated else ""
    print(f"{meta['variant']} on {out['device']['name']}{flag}: p50 {pct['p50_ms']:.1f} ms, "
          f"p90 {pct['p90_ms']:.1f} ms, p99 {pct['p99_ms']:.1f} ms over {len(rows)} runs, {args.threads} threads "
          f"-> {args.out}")
    return 0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


if __name__ == "__main__":
    raise SystemExit(main())
