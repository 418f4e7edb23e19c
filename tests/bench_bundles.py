"""Benchmark: every CPU variant's deploy bundle, run in a clean virtual environment holding only its runtime,
numpy and OpenCV, against yoloq's own detections on the evaluation images.

    python tests/bench_bundles.py --venv onnxruntime=VENV --venv openvino=VENV --venv litert=VENV
                                  [--config configs/smoke.yaml] [--out /tmp/bundles]

Each venv is made by ``python -m venv V && V/bin/pip install -r <bundle>/requirements.txt`` (the bundle's own
list). Prints, per variant: images, detections, how many match yoloq's (same class, box within 0.02 px, score
within 1e-5), and the largest box and score differences; writes the table to
``results/bundles/<machine>/bundles.md`` with the runtime versions each venv held.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

from yoloq.api import as_config
from yoloq.backends.base import Artifact
from yoloq.backends.registry import get_backend
from yoloq.bundle import export_bundle
from yoloq.config import EvalConfig
from yoloq.data import load_split
from yoloq.paths import REPO_ROOT
from yoloq.postprocess import postprocess
from yoloq.preprocess import prepare, read_image
from yoloq.provenance import describe, machine
from yoloq.records import write_atomic


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--venv", action="append", default=[], help="FORMAT=PATH of a venv with only that runtime")
    ap.add_argument("--out", default="/tmp/yoloq-bundles")
    args = ap.parse_args()
    venvs = dict(v.split("=", 1) for v in args.venv)
    cfg = as_config(args.config)
    split = load_split(cfg.data, Path(cfg.base_dir))
    images = [str(s.path) for s in split.samples]
    post = EvalConfig(conf=cfg.latency.conf, iou=cfg.eval.iou, max_det=cfg.eval.max_det, multi_label=False)
    lines = [f"# Deploy bundles in clean venvs\n\nMachine: {describe(machine())} (`{machine()['id']}`); "
             f"{len(images)} images of {split.name}/{split.split}; `python tests/bench_bundles.py` with "
             f"`{args.config}`. "
             "Each predict.py ran in a venv holding only its runtime, numpy and OpenCV "
             f"({', '.join(_freeze(Path(v)) for v in venvs.values())}).\n",
             "| variant | clean venv | images | detections | match yoloq | max box diff px | max score diff |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in cfg.variants:
        if v.format not in venvs:
            continue
        out = Path(args.out) / v.label
        model = export_bundle(cfg, v.label, out)
        meta = json.loads((out / "meta.json").read_text())
        py = Path(venvs[v.format]) / "bin" / "python"
        subprocess.run([str(py), "predict.py", *images, "--json", "dets.json"], cwd=out, check=True,
                       capture_output=True)
        got = json.loads((out / "dets.json").read_text())
        rt = get_backend(v.format).load(Artifact(model, v.format, meta["precision"]), cfg.latency.threads)
        n = match = 0
        box_d = score_d = 0.0
        for f in images:
            x, lbs = prepare([read_image(Path(f))], cfg.imgsz)
            want = postprocess(rt.predict(x), lbs, post)[0]
            have = got.get(f, [])
            n += len(want)
            if len(have) != len(want) or not len(want):
                continue
            b = np.abs(np.asarray([d["box"] for d in have]) - want.boxes).max(1)
            s = np.abs(np.asarray([d["score"] for d in have]) - want.scores)
            c = np.asarray([d["class"] for d in have]) == want.classes
            match += int(((b <= 0.02) & (s <= 1e-5) & c).sum())
            box_d, score_d = max(box_d, float(b.max())), max(score_d, float(s.max()))
        lines.append(f"| {v.label} | {Path(venvs[v.format]).name} | {len(images)} | {n} | {match}/{n} | {box_d:.4f} | "
                     f"{score_d:.1e} |")
        print(lines[-1], flush=True)
    dest = REPO_ROOT / "results" / "bundles" / machine()["id"] / "bundles.md"
    write_atomic(dest, "\n".join(lines) + "\n")
    print(f"written: {dest}")
    return 0


def _freeze(venv: Path) -> str:
    """The packages of a venv, as pip lists them (name==version, comma-separated)."""
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "freeze"],
                         capture_output=True, text=True).stdout.split()
    return ", ".join(x for x in out if not x.startswith(("pip==", "setuptools==")))


if __name__ == "__main__":
    raise SystemExit(main())
