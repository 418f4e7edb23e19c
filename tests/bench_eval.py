"""Benchmark: where an accuracy pass spends its time, per image, and what the statistics after it cost.

    python tests/bench_eval.py [RUN_DIR] [--variants onnxruntime-int8 openvino-int8 ...] [--images N]

RUN_DIR is a finished run on coco1k val (default: ``results/default-coco1k/<this machine>``); its exports are
reused. For each variant, on the run's evaluation images (batch 1, as the accuracy pass runs): input,
inference, postprocess at the evaluation threshold (conf 0.001, multi-label, NMS), detections to COCO, each
per image (mean ms), the images decoded once (as a run does); then the run's statistics: COCOeval, the
paired bootstrap (1,000 resamples, against the reference) and the agreement with the reference. Prints the
table and a paper estimate for 5,000 images (COCO val2017) on this machine, with the bootstrap measured on the
same per-image data tiled to 5,000 images.
Writes ``results/eval-budget/<machine>/budget.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from yoloq.agreement import StoredDetections, agreement_eval
from yoloq.api import load
from yoloq.bootstrap import PerImageEval, paired_bootstrap
from yoloq.config import EvalConfig, load_config
from yoloq.data import load_split
from yoloq.decoded import decoded_items
from yoloq.evaluate import CocoEvaluator
from yoloq.paths import REPO_ROOT
from yoloq.postprocess import postprocess
from yoloq.provenance import describe, machine
from yoloq.records import write_atomic


def tiled(pe: PerImageEval, times: int) -> PerImageEval:
    """``pe`` as if its images came ``times`` times (distinct ids): the size of a larger evaluation."""
    n = len(pe.image_ids)
    order = [np.argsort(np.concatenate([np.arange(len(i))] * times), kind="mergesort") for i in pe.img]
    return PerImageEval(np.arange(n * times), pe.rec_thrs,
                        tuple(np.concatenate([i + n * c for c in range(times)])[o] for i, o in zip(pe.img, order)),
                        tuple(np.concatenate([t] * times, 1)[:, o] for t, o in zip(pe.tp, order)),
                        tuple(np.concatenate([f] * times, 1)[:, o] for f, o in zip(pe.fp, order)),
                        np.concatenate([pe.npos] * times, 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default=str(REPO_ROOT / "results/default-coco1k" / machine()["id"]))
    ap.add_argument("--variants", nargs="+", default=["onnxruntime-fp32", "onnxruntime-int8", "openvino-int8",
                                                       "litert-int8"])
    ap.add_argument("--images", type=int, default=None)
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    cfg = load_config(run_dir / "config.yaml")
    split = load_split(cfg.data, Path(cfg.base_dir))
    samples = split.samples[: args.images] if args.images else split.samples
    ev_cfg: EvalConfig = cfg.eval
    sub = dataclasses.replace(split, samples=tuple(samples))
    cache = Path(tempfile.mkdtemp(prefix="yoloq-decoded-"))
    t0 = time.perf_counter()
    for _ in decoded_items(sub, cfg.imgsz, [], cache):  # the first variant's pass: decode, letterbox, store
        pass
    cold = 1000 * (time.perf_counter() - t0) / len(samples)
    rows = []
    for name in args.variants:
        pred = load(run_dir, name)
        stages = {k: 0.0 for k in ("input", "inference", "postprocess", "to COCO")}
        evaluator = CocoEvaluator(split.gt, split.category_ids)
        x, lb, _ = next(decoded_items(sub, pred.imgsz, [], cache))  # warm-up: imports, first-call allocations
        postprocess(pred.runtime.predict(x), lb, ev_cfg, pred.end2end)
        items = decoded_items(sub, pred.imgsz, [], cache)
        t_all = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            item = next(items, None)
            if item is None:
                break
            x, lb, image_id = item
            t1 = time.perf_counter()
            raw = pred.runtime.predict(x)
            t2 = time.perf_counter()
            det = postprocess(raw, lb, ev_cfg, pred.end2end)[0]
            t3 = time.perf_counter()
            evaluator.process(image_id, det)
            t4 = time.perf_counter()
            for k, a, b in zip(stages, (t0, t1, t2, t3), (t1, t2, t3, t4)):
                stages[k] += b - a
        loop = time.perf_counter() - t_all
        t0 = time.perf_counter()
        metrics = evaluator.evaluate()
        t_cocoeval = time.perf_counter() - t0
        rows.append((name, len(samples), {k: 1000 * v / len(samples) for k, v in stages.items()}, loop, t_cocoeval,
                     metrics.map50_95, metrics.detections))
        print(f"{name}: {len(samples)} images, loop {loop:.0f} s, COCOeval {t_cocoeval:.1f} s", flush=True)
    shutil.rmtree(cache, ignore_errors=True)

    ev = run_dir / "evaldata"
    ref = load(run_dir).record
    ref_pe = PerImageEval.load(ev / f"{ref.name}.npz")
    var_pe = PerImageEval.load(ev / f"{args.variants[-1]}.npz")
    t0 = time.perf_counter()
    ci = paired_bootstrap(ref_pe, var_pe, 1000, 0)
    t_boot = time.perf_counter() - t0
    ref_det = StoredDetections.load(ev / f"{ref.name}.detections.npz")
    var_det = StoredDetections.load(ev / f"{args.variants[-1]}.detections.npz")
    t0 = time.perf_counter()
    agree, _ = agreement_eval(ref_det, var_det)
    t_agree = time.perf_counter() - t0
    times = max(1, round(5000 / len(ref_pe.image_ids)))
    big_ref, big_var = tiled(ref_pe, times), tiled(var_pe, times)
    t0 = time.perf_counter()
    paired_bootstrap(big_ref, big_var, 1000, 0)
    t_boot_big = time.perf_counter() - t0

    fp = machine()["id"]
    lines = [f"# Evaluation budget: {run_dir.parent.name} run, {len(samples)} images", "",
             f"Machine: {describe(machine())} (`{fp}`).", "",
             "Per image, mean ms, batch 1, the evaluation threshold (conf 0.001). 'input': the decoded image read "
             "back and made a float input (the first variant's pass decodes and letterboxes instead: "
             f"{cold:.1f} ms an image). 'outside' = everything but inference, as a share of inference.", "",
             "| variant | input | inference | postprocess | to COCO | outside / inference | "
             "loop s | COCOeval s | mAP50-95 | detections |", "|" + " --- |" * 10]
    for name, _n, st, loop, tce, m, d in rows:
        outside = sum(v for k, v in st.items() if k != "inference")
        lines.append(f"| {name} | {st['input']:.1f} | {st['inference']:.1f} | "
                     f"{st['postprocess']:.1f} | {st['to COCO']:.2f} | {outside / st['inference']:.0%} | {loop:.0f} | "
                     f"{tce:.1f} | {m:.4f} | {d} |")
    per_variant = [loop + tce for _, _, _, loop, tce, _, _ in rows]
    lines += ["", f"Statistics on {len(ref_pe.image_ids)} images ({ref.name} against {args.variants[-1]}): "
              f"paired bootstrap (1,000 resamples) {t_boot:.1f} s (drop {ci['drop']:+.4f} [{ci['lo']:+.4f}, "
              f"{ci['hi']:+.4f}]); agreement {t_agree:.1f} s ({agree['map50_95']:.3f}); "
              f"bootstrap on the same data tiled to {len(big_ref.image_ids)} images {t_boot_big:.1f} s.", "",
              "## Paper estimate, COCO val2017 (5,000 images), this machine",
              "",
              "Scaling the loop and COCOeval linearly from the rows above (COCOeval grows about linearly with "
              "images at a fixed detection cap), the bootstrap as measured on the tiled data:", ""]
    scale = 5000 / len(samples)
    for (name, *_), t in zip(rows, per_variant):
        lines.append(f"- {name}: accuracy pass about {t * scale / 60:.0f} min, bootstrap {t_boot_big:.0f} s")
    total = sum(per_variant) * scale / 60
    lines.append(f"- the listed variants one after another on one machine: about {total:.0f} min; "
                 "on a Ray cluster with one 2-core worker per variant the wall time is the slowest variant's, "
                 "plus shipping the dataset once per node")
    text = "\n".join(lines) + "\n"
    print(text)
    out = REPO_ROOT / "results/eval-budget" / fp / "budget.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
