"""Benchmark: every YOLO family through every CPU format and precision, as .pt and as Ultralytics .onnx.

    python tests/bench_families.py [--out results/families] [--families yolo26n yolov8n ...]

Builds random-init checkpoints from Ultralytics' YAMLs (see ``families.py``; nothing is downloaded),
runs each through the pipeline (imgsz 320, 4 coco-mini val2017 images, 4 calibration images) in
``OUT/<machine>/<family>-<source>-<branch>/``, and writes ``OUT/<machine>/families.md`` and
``families.json``: per run and variant, its status, the head branch that ran and, for FP32 exports,
the share of torch's top detections it reproduces and its largest raw-output difference from torch.
Random weights score mAP 0, so no accuracy is claimed here, and the runs' latencies are not read
(random models); every figure names this machine. Only families.md/json are committed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from families import ALL_VARIANTS, END2END, FAMILIES, build, config, export_onnx, matched  # noqa: E402

from yoloq.artifacts import cached_artifact  # noqa: E402
from yoloq.backends.base import Artifact  # noqa: E402
from yoloq.backends.registry import get_backend, resolve_config  # noqa: E402
from yoloq.config import EvalConfig, parse_config  # noqa: E402
from yoloq.data import load_split  # noqa: E402
from yoloq.paths import REPO_ROOT, shared_root  # noqa: E402
from yoloq.pipeline import run  # noqa: E402
from yoloq.postprocess import postprocess  # noqa: E402
from yoloq.preprocess import prepare, read_image  # noqa: E402
from yoloq.provenance import describe, machine  # noqa: E402
from yoloq.records import RecordStore, write_atomic  # noqa: E402

IMGSZ = 320
POST = EvalConfig(conf=0.25, iou=0.7, max_det=300, multi_label=False)


def fidelity(ref, rt, batches, end2end: bool) -> dict:  # noqa: ANN001 - runtimes
    """Share of torch's top-30 detections reproduced (mean over images) and the largest raw difference."""
    shares, diff = [], 0.0
    for x, lbs in batches:
        a, b = ref.predict(x), rt.predict(x)
        if not end2end and a.shape == b.shape:
            diff = max(diff, float(np.abs(a[:, 4:] - b[:, 4:]).max()))
        shares.append(matched(postprocess(a, lbs, POST, end2end)[0], postprocess(b, lbs, POST, end2end)[0]))
    return {"matched": round(float(np.mean(shares)), 3), "max_score_diff": round(diff, 6) if not end2end else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/families")
    ap.add_argument("--families", nargs="*", default=list(FAMILIES))
    args = ap.parse_args()
    from ultralytics import YOLO

    out = Path(args.out) / machine()["id"]
    names = YOLO(str(shared_root() / "models" / "yolo11n.pt")).names
    split = load_split(parse_config(config(Path("x.pt"), out, ALL_VARIANTS), REPO_ROOT).data, REPO_ROOT)
    batches = [prepare([read_image(s.path)], IMGSZ) for s in split.samples[:2]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="yoloq-families-") as tmp:
        for fam in args.families:
            pt = build(fam, Path(tmp), names)
            modes = [("pt", None, False)] + ([("pt", False, True)] if fam in END2END else []) + \
                [("onnx", None, False)] + ([("onnx", None, True)] if fam in END2END else [])
            for kind, nms, e2e in modes:
                model = pt if kind == "pt" else export_onnx(pt, IMGSZ, e2e)
                variants = ([{"format": "torch", "precision": "fp32"}] if kind == "pt" else []) + \
                    [v for v in ALL_VARIANTS if kind == "pt" or v["format"] != "litert"]
                run_dir = out / f"{fam}-{kind}-{'one2one' if e2e else 'one2many'}"
                t0 = time.perf_counter()
                cfg = resolve_config(parse_config(config(model, run_dir, variants, nms, IMGSZ), REPO_ROOT))
                run(cfg, run_dir)
                wall = time.perf_counter() - t0
                ref = get_backend("torch").load(Artifact(pt, "torch", "fp32", {"end2end": e2e, "max_det": 300}), 2)
                for r in RecordStore(run_dir).all():
                    row = {"family": fam, "source": kind, "run": run_dir.name, "variant": r.name,
                           "status": r.status, "reason": r.reason, "branch": r.head.get("branch"),
                           "head": r.head.get("type"), "dfl": r.head.get("dfl"), "run_seconds": round(wall, 1)}
                    if r.ok and r.precision == "fp32" and r.format != "torch":
                        art = cached_artifact(run_dir / "artifacts" / r.name, r.key)
                        row |= fidelity(ref, get_backend(r.format).load(art, 2), batches, r.end2end)
                    rows.append(row)
                print(f"{run_dir.name}: {wall:.0f}s", flush=True)
    write_atomic(out / "families.json", json.dumps({"machine": machine(), "rows": rows}, indent=1))
    md = table(rows)
    write_atomic(out / "families.md", f"Measured on {describe(machine())}.\n\n{md}\n")
    print(md)
    return 0


def table(rows: list[dict]) -> str:
    """family x source x branch rows, one column per format/precision: ok (+ FP32 fidelity) or status."""
    cols = [f"{v['format']}-{v['precision']}" for v in ALL_VARIANTS]
    lines = ["| model | source | head, branch that ran | " + " | ".join(cols) + " |",
             "|" + "---|" * (3 + len(cols))]
    runs: dict[str, list[dict]] = {}
    for r in rows:
        runs.setdefault(r["run"], []).append(r)
    for run_rows in runs.values():
        by = {r["variant"]: r for r in run_rows}
        first = run_rows[0]
        branches = sorted({r["branch"] for r in run_rows if r["status"] == "ok"})
        head = f"{first['head']}{' DFL' if first['dfl'] else ' no-DFL'}, {' / '.join(branches)}"
        cells = []
        for c in cols:
            r = by.get(c)
            if r is None or r["status"] == "skipped":
                cells.append("n/a" if r is None or "source" in r["reason"] else "skipped")
            elif r["status"] != "ok":
                cells.append("**failed**")
            else:
                cell = "ok"
                if "matched" in r:
                    cell += f" ({r['matched']:.0%} of torch)"
                if first["branch"] == "one2one" and r["branch"] != "one2one":
                    cell += f" [{r['branch']}]"
                cells.append(cell)
        lines.append(f"| {first['family']} | {first['source']} | {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
