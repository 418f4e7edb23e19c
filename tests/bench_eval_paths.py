"""Benchmark: the accuracy pass's two fast paths against what they replace, on a finished run's evaluation images.

    python tests/bench_eval_paths.py [RUN_DIR] [--variant openvino-int8] [--images N]

1. NMS at the evaluation threshold (conf 0.001, multi-label): Ultralytics' ``non_max_suppression`` as a yoloq
   process used to run it (its pure-torch NMS: torchvision not imported) against yoloq's ``nms`` (torchvision's
   kernel on the same score order), on the variant's raw outputs: ms per image and whether every output is equal.
2. OpenVINO's accuracy pass as yoloq runs it (synchronous ``predict``) against two requests in flight
   (OpenVINO's ``AsyncInferQueue`` on the same compiled model, the next image running while the last is
   scored), twice each, alternating: seconds and whether the COCO results are equal row for row. (Measured here
   no faster on 2 cores, so yoloq does not use it.)

RUN_DIR defaults to ``results/default-coco1k/<this machine>`` (its exports are reused). Writes
``results/eval-budget/<machine>/paths.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from yoloq.accuracy import score
from yoloq.api import load
from yoloq.config import load_config
from yoloq.data import load_split
from yoloq.decoded import decoded_items
from yoloq.paths import REPO_ROOT
from yoloq.postprocess import nms
from yoloq.provenance import describe, machine
from yoloq.records import write_atomic


def in_flight(compiled: object, batches: Iterable[np.ndarray], n: int = 2) -> Iterator[np.ndarray]:
    """Raw outputs of ``batches`` in order, with ``n`` OpenVINO requests queued."""
    import openvino as ov

    done: dict[int, np.ndarray] = {}
    queue = ov.AsyncInferQueue(compiled, n)
    queue.set_callback(lambda request, i: done.__setitem__(i, request.get_output_tensor(0).data.copy()))
    pending: deque[int] = deque()
    for i, batch in enumerate(batches):
        queue.start_async({0: batch}, userdata=i)
        pending.append(i)
        while pending and pending[0] in done:
            yield done.pop(pending.popleft())
    queue.wait_all()
    while pending:
        yield done.pop(pending.popleft())


def async_score(pred: object, split: object, cfg: object) -> list:
    """The accuracy pass with :func:`in_flight` inference (same images, NMS and COCO results as ``score``)."""
    from yoloq.evaluate import CocoEvaluator
    from yoloq.postprocess import postprocess

    evaluator = CocoEvaluator(split.gt, split.category_ids)
    meta: deque = deque()

    def inputs() -> Iterator[np.ndarray]:
        for x, lbs, image_id in decoded_items(split, pred.imgsz, []):
            meta.append((lbs, image_id))
            yield x

    for raw in in_flight(pred.runtime.compiled, inputs()):
        lbs, image_id = meta.popleft()
        evaluator.process(image_id, postprocess(raw, lbs, cfg, pred.end2end)[0])
    return evaluator.results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default=str(REPO_ROOT / "results/default-coco1k" / machine()["id"]))
    ap.add_argument("--variant", default="openvino-int8")
    ap.add_argument("--images", type=int, default=None)
    args = ap.parse_args()
    import torch
    import torchvision
    from ultralytics.utils.nms import non_max_suppression

    run_dir = Path(args.run_dir)
    cfg = load_config(run_dir / "config.yaml")
    split = load_split(cfg.data, Path(cfg.base_dir))
    if args.images:
        split = dataclasses.replace(split, samples=split.samples[: args.images])
    pred = load(run_dir, args.variant)
    raws = [torch.from_numpy(np.ascontiguousarray(pred.runtime.predict(x), dtype=np.float32))
            for x, _, _ in decoded_items(split, pred.imgsz, [])]
    e = cfg.eval
    t0 = time.perf_counter()
    ours = [nms(r.clone(), e)[0] for r in raws]
    t_ours = time.perf_counter() - t0
    sys.modules.pop("torchvision")  # Ultralytics then takes its own pure-torch NMS, as in a yoloq process before
    try:
        t0 = time.perf_counter()
        theirs = [non_max_suppression(r.clone(), conf_thres=e.conf, iou_thres=e.iou, multi_label=e.multi_label,
                                      max_det=e.max_det, max_time_img=60.0)[0] for r in raws]
        t_theirs = time.perf_counter() - t0
    finally:
        sys.modules["torchvision"] = torchvision
    same_nms = all(torch.equal(a, b) for a, b in zip(ours, theirs))

    passes: dict[str, list[float]] = {"sync": [], "stream": []}
    results = {}
    for mode in ("sync", "stream", "sync", "stream"):
        t0 = time.perf_counter()
        if mode == "sync":
            ev, _ = score(pred.runtime.predict, split, split.category_ids, pred.imgsz, e, pred.end2end)
            results[mode] = ev.results
        else:
            results[mode] = async_score(pred, split, e)
        passes[mode].append(time.perf_counter() - t0)
    same_pass = results["sync"] == results["stream"]

    n = len(raws)
    text = "\n".join([
        f"# The accuracy pass's fast paths: {args.variant}, {run_dir.parent.name} run, {n} images", "",
        f"Machine: {describe(machine())} (`{machine()['id']}`).", "",
        f"NMS at conf {e.conf} (multi-label {e.multi_label}), on the variant's raw outputs: Ultralytics' pure-torch "
        f"NMS {1000 * t_theirs / n:.1f} ms an image, yoloq's {1000 * t_ours / n:.1f} ms; every output equal: "
        f"{same_nms}.", "",
        f"Accuracy pass (input, inference, NMS, COCO): synchronous {', '.join(f'{s:.1f}' for s in passes['sync'])} s, "
        f"two requests in flight {', '.join(f'{s:.1f}' for s in passes['stream'])} s; COCO results equal row for "
        f"row: {same_pass} ({len(results['sync'])} rows).", ""])
    print(text)
    out = REPO_ROOT / "results/eval-budget" / machine()["id"] / "paths.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
