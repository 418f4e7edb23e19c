"""Benchmark: an OpenVINO variant's throughput in yoloq's harness beside ``benchmark_app -hint throughput`` on the
same IR, side by side, and the record of it.

    python tests/bench_throughput.py RUN_DIR [--variant openvino-int8] [--seconds 10] [--rounds 3]

Not a test (pytest does not collect it): it prints figures and writes them, with the machine, to
``results/throughput-check/<machine>/<variant>.json``. Each round runs, one after another on the same machine:
OpenVINO's own ``benchmark_app`` (throughput hint, its own stream and request counts, random inputs, the model
alone), yoloq's harness on the model alone (letterboxed inputs made before timing) and yoloq's harness end to end
(letterbox and NMS included), both at the stream count where the run's record is fastest. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import sysconfig
from pathlib import Path

from yoloq.backends.base import Artifact
from yoloq.backends.openvino import model_xml
from yoloq.backends.registry import get_backend
from yoloq.config import StreamsConfig, load_config
from yoloq.data import load_split
from yoloq.machine_load import OutsideLoad
from yoloq.passes import deploy_post, latency_images
from yoloq.paths import REPO_ROOT, from_display
from yoloq.provenance import describe, machine
from yoloq.records import RecordStore, write_atomic
from yoloq.throughput import cameras, measure_streams


def benchmark_app(xml: Path, seconds: float) -> dict:
    """One ``benchmark_app -hint throughput`` run: its FPS and the streams and requests it chose."""
    exe = Path(sysconfig.get_path("scripts")) / "benchmark_app"
    out = subprocess.run([str(exe), "-m", str(xml), "-d", "CPU", "-hint", "throughput", "-t", str(int(seconds))],
                         capture_output=True, text=True, timeout=seconds * 4 + 120)
    text = out.stdout + out.stderr
    fps = re.search(r"Throughput:\s+([\d.]+)\s+FPS", text)
    if out.returncode != 0 or fps is None:
        raise SystemExit(f"bench: benchmark_app failed (exit {out.returncode}): {text[-800:]}")
    nireq = re.search(r"(\d+) inference requests", text)
    nstreams = re.search(r"NUM_STREAMS:\s*(\d+)", text)
    return {"fps": float(fps.group(1)), "requests": int(nireq.group(1)) if nireq else None,
            "cpu_streams": int(nstreams.group(1)) if nstreams else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--variant", default="openvino-int8")
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds of each measurement in a round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    rec = RecordStore(run_dir).get(args.variant)
    if rec is None or not rec.throughput.get("levels"):
        print(f"bench: {run_dir} has no throughput curve for {args.variant}; run the config first", file=sys.stderr)
        return 2
    cfg = load_config(run_dir / "config.yaml")
    fps_target = rec.throughput["settings"]["fps"]
    n = cameras(rec.throughput["levels"], fps_target, batches=False)["streams"]  # its best stream count
    xml = model_xml(from_display(rec.artifact, run_dir))
    backend = get_backend("openvino")
    artifact = Artifact(xml.parent, "openvino", rec.precision, rec.artifact_info)
    runtimes = backend.load_streams(artifact, n, cfg.latency.threads)
    images = latency_images(load_split(cfg.data, REPO_ROOT), cfg.latency.images)
    post = deploy_post(cfg.eval, cfg.latency, rec.end2end)
    streams = StreamsConfig(levels=(n,), seconds=args.seconds, block=args.seconds, warmup=5)
    rounds = []
    for i in range(args.rounds):
        with OutsideLoad() as load:
            bench = benchmark_app(xml, args.seconds)
            model = measure_streams({"v": ({n: runtimes}, post)}, images, cfg.imgsz, streams, model_only=True)["v"][0]
            e2e = measure_streams({"v": ({n: runtimes}, post)}, images, cfg.imgsz, streams)["v"][0]
        rounds.append({"benchmark_app": bench, "yoloq_model_only_fps": model.fps, "yoloq_end_to_end_fps": e2e.fps,
                       "yoloq_end_to_end_p90_ms": e2e.p90_ms, "outside_load": load.result})
        print(f"round {i + 1}: benchmark_app {bench['fps']:.1f} FPS ({bench['requests']} requests, "
              f"{bench['cpu_streams']} CPU streams); yoloq at {n} streams: model alone {model.fps:.1f} FPS, "
              f"end to end {e2e.fps:.1f} FPS")
    med = {k: statistics.median(r[k] for r in rounds) for k in ("yoloq_model_only_fps", "yoloq_end_to_end_fps")}
    bench_fps = statistics.median(r["benchmark_app"]["fps"] for r in rounds)
    where = run_dir.resolve()
    result = {"variant": args.variant, "run": str(where.relative_to(REPO_ROOT) if where.is_relative_to(REPO_ROOT)
                                                  else where.name),
              "record_key": rec.key, "ir": xml.name, "streams": n, "seconds": args.seconds,
              "rounds": rounds, "benchmark_app_fps": bench_fps, **med,
              "model_only_vs_benchmark_app": med["yoloq_model_only_fps"] / bench_fps,
              "end_to_end_vs_benchmark_app": med["yoloq_end_to_end_fps"] / bench_fps,
              "machine": machine(), "threads": cfg.latency.threads}
    out = REPO_ROOT / "results" / "throughput-check" / machine()["id"] / f"{args.variant}.json"
    write_atomic(out, json.dumps(result, indent=1) + "\n")
    print(f"\nmachine: {describe(machine())} (id {machine()['id']})")
    print(f"{args.variant} ({xml.name}), medians of {args.rounds} rounds of {args.seconds:g} s: benchmark_app "
          f"{bench_fps:.1f} FPS; yoloq at {n} streams: model alone {med['yoloq_model_only_fps']:.1f} FPS "
          f"({100 * result['model_only_vs_benchmark_app']:.0f}% of it), end to end {med['yoloq_end_to_end_fps']:.1f} "
          f"FPS ({100 * result['end_to_end_vs_benchmark_app']:.0f}%)\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
