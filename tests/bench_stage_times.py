"""Benchmark: run a config from an empty folder and print where the wall time went, stage by stage.

    python tests/bench_stage_times.py configs/default.yaml [--out DIR]

Not a test (pytest does not collect it): it prints figures. Every figure comes from the records the
run wrote (``timings_s`` per variant: export, evaluate, latency, bootstrap) plus this script's own
wall clock, and names the machine.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from yoloq.provenance import describe, machine
from yoloq.records import RecordStore


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--out", help="run folder (must be empty or absent; default: a temporary folder)")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="yoloq-bench-"))
    if out.exists() and any(out.iterdir()):
        print(f"bench: {out} is not empty; give an empty folder so every stage is measured", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "yoloq", "run", args.config, "--out", str(out)])
    wall = time.perf_counter() - t0
    records = RecordStore(out).all()
    stages: dict[str, float] = {}
    for r in records:
        for k, v in r.timings_s.items():
            if k != "latency":
                stages[k] = stages.get(k, 0.0) + v
    passes = {(r.latency.get("group") or r.name): r.latency.get("pass_seconds", 0.0) for r in records if r.latency}
    stages["latency"] = sum(passes.values())  # a side-by-side pass counts once, however many variants it timed
    print(f"\nmachine: {describe(machine())} (id {machine()['id']})")
    print(f"config: {args.config}; {len(records)} variants; exit {code}; run folder {out}")
    print(f"{'stage':<22}{'seconds':>9}")
    for k in ("export", "evaluate", "latency", "bootstrap"):
        print(f"{k:<22}{stages.get(k, 0.0):>9.1f}")
    print(f"{'other (load, report)':<22}{wall - sum(stages.values()):>9.1f}")
    print(f"{'wall':<22}{wall:>9.1f}")
    print("per variant (s): " + "; ".join(f"{r.name} " + ", ".join(f"{k} {v:.0f}" for k, v in r.timings_s.items())
                                           for r in records))
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
