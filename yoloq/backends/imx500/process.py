"""Sony's tools run for one IMX500 export: MCT's worker in the side environment, then imxconv-pt once that process
has ended (its memory free), each watched (progress with an ETA, peak memory per phase); and what MCT will need."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.backends.watched import Watched, available_mb, run_watched
from yoloq.errors import ExportError
from yoloq.progress import say, step


def mct_memory_gb(images: int, imgsz: int) -> float:
    """About what MCT's process holds at its peak (GB): it grows with the calibration images (measured on
    YOLO11n, Ultralytics' settings: 1.7 GB on 8 and 4.9 GB on 48 at 320; 6.3 GB on 64 and 21 GB on 200 at 640)."""
    return 1.0 + images * (0.08 + 0.028 * max(0.0, imgsz / 320 - 1))


def warn_memory(images: np.ndarray) -> np.ndarray:
    """Say so before an export that will not fit this machine's free memory (it would be killed, or thrash, after
    minutes), naming the option that shrinks it."""
    n, size = len(images), int(images.shape[-1])
    need, free = mct_memory_gb(n, size), available_mb()
    if free is not None and need * 1024 > 0.9 * free:
        say(f"  warning: Sony's MCT will hold about {need:.0f} GB for {n} calibration images at {size} and this "
            f"machine has {free / 1024:.0f} GB free: the export may be killed or crawl; options.calibration_images: "
            f"64 keeps it near {mct_memory_gb(64, size):.0f} GB")
    return images


def died(run: Watched) -> str:
    """Why a watched process gave no reply: killed (the kernel's out-of-memory killer, most likely, at its peak)."""
    if run.returncode >= 0:
        return "no reply"
    peak = f" at {run.peak_mb / 1024:.1f} GB resident" if run.peak_mb else ""
    oom = f" (out of memory{peak}? run it alone, or set options.calibration_images: 64)" if run.returncode == -9 else ""
    return f"the export process was killed by signal {-run.returncode}{oom}"


def run_export(python: Path, worker: Path, workdir: Path, name: str, req: dict[str, Any], images: np.ndarray,
               timeout_s: float) -> dict[str, Any]:
    """MCT's quantization in the side environment's worker, then, once it has ended and its memory is free,
    imxconv-pt (Java) on the quantized ONNX: each watched (progress with an ETA on the console, the peak of its
    process tree's memory in the reply's ``memory``)."""
    cal, out, reply_path = Path(req["calibration"]), Path(req["out"]), Path(req["reply"])
    np.save(cal, images.astype(np.float32) / 255.0)
    shutil.rmtree(out, ignore_errors=True)
    reply_path.unlink(missing_ok=True)
    (workdir / "request.json").write_text(json.dumps(req))
    log = workdir / "imx500-export.log"
    log.write_text("")
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "PYTHONPATH": ""}
    label = f"{name} (IMX500)"
    with step(f"quantize {name} (Sony MCT for the IMX500, then imxconv-pt; in its own environment)"):
        try:
            mct = run_watched([str(python), str(worker), str(workdir / "request.json")],
                              log, timeout_s, label, "loading the model and MCT", env)
        except subprocess.TimeoutExpired:
            raise ExportError(f"the IMX500 export took over {timeout_s} s (log: {log})") from None
        cal.unlink(missing_ok=True)
        reply = json.loads(reply_path.read_text()) if reply_path.is_file() else {"error": died(mct)}
        if reply.get("ok"):
            argv = [str(python.parent / a) if a == "imxconv-pt" else a.replace("{out}", str(out))
                    for a in reply.pop("convert")]
            try:
                conv = run_watched(argv, log, timeout_s, label, "imxconv-pt (Sony's converter)", env)
            except subprocess.TimeoutExpired:
                raise ExportError(f"imxconv-pt took over {timeout_s} s (log: {log})") from None
            peaks = [r.peak_mb for r in (mct, conv) if r.peak_mb is not None]
            reply["memory"] = {"quantize": mct.memory(), "convert": conv.memory(),
                               "peak_mb": round(max(peaks)) if peaks else None}
            reply["seconds"] = round(reply["seconds"] + conv.seconds, 1)
            if conv.returncode != 0:
                reply = {"error": f"imxconv-pt ended with {died(conv) if conv.returncode < 0 else conv.returncode}"}
    if not reply.get("ok"):
        said = re.findall(r"ERROR: CODE: \[GE\] (layer: .+?)\s*$", log.read_text(errors="replace"), re.M)
        error = f"imxconv-pt refused the model: {said[0]}" if said else reply.get("error")
        raise ExportError(f"IMX500 export: {error} (log: {log})")
    if not next(out.glob("*.onnx"), None) or not (out / "packerOut.zip").is_file():
        raise ExportError(f"the IMX500 export left no quantized ONNX or packerOut.zip in {out} (log: {log})")
    return reply

