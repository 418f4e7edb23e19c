"""Benchmark: a run's OpenVINO variants timed with oneDNN's instruction set capped, each in its own process.

    python tests/bench_openvino_isa.py RUN_DIR [--variant openvino-int8 --variant openvino-fp16]
        [--isa ALL --isa AVX512_CORE_BF16] [--rounds 3] [--runs 100]

Not a test (pytest does not collect it): it prints figures and writes them, with the machine, to
``results/openvino-isa/<machine>/<run>.json``. ``ONEDNN_MAX_CPU_ISA`` is read once per process, so each (variant,
ISA) is timed in a fresh process, loaded as yoloq loads it (its precision hint, 2 threads, the latency hint), on
one real letterboxed evaluation image: the model alone, the median of ``--runs`` inferences after 10 warm-ups.
The rounds run every cell one after another, in turn; the figures are medians over rounds. ``ALL``: no cap (AMX
where the CPU has it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from yoloq.paths import REPO_ROOT
from yoloq.provenance import describe, machine, machine_id
from yoloq.records import RecordStore, write_atomic

_CHILD = """
import json, sys, time
import numpy as np
from pathlib import Path
from yoloq.artifacts import cached_artifact
from yoloq.backends.registry import get_backend
from yoloq.config import load_config
from yoloq.data import load_split
from yoloq.preprocess import prepare, read_image
from yoloq.records import RecordStore
run, name, runs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rec = RecordStore(run).get(name)
artifact = cached_artifact(run / "artifacts" / name, rec.key)
rt = get_backend(rec.format).load(artifact, 2)
cfg = load_config(run / "config.yaml")
sample = load_split(cfg.data, Path(cfg.base_dir)).samples[0]
x = prepare([read_image(sample.path)], cfg.imgsz)[0]
for _ in range(10):
    rt.predict(x)
ts = []
for _ in range(runs):
    t = time.perf_counter(); rt.predict(x); ts.append((time.perf_counter() - t) * 1000)
print(json.dumps({"ms": float(np.median(ts)), "ran": rt.info.get("precision_ran")}))
"""


def time_one(run: Path, name: str, isa: str, runs: int) -> dict:
    env = dict(os.environ)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa != "ALL":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    out = subprocess.run([sys.executable, "-c", _CHILD, str(run), name, str(runs)], env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--variant", action="append", default=None)
    ap.add_argument("--isa", action="append", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=100)
    a = ap.parse_args()
    names = a.variant or ["openvino-int8", "openvino-fp16", "openvino-fp32"]
    isas = a.isa or ["ALL", "AVX512_CORE_BF16"]
    if not RecordStore(a.run_dir).all():
        print(f"bench_openvino_isa: no records in {a.run_dir}: give a run folder with OpenVINO variants")
        return 2
    cells: dict[str, dict[str, list[float]]] = {n: {i: [] for i in isas} for n in names}
    ran: dict[str, dict[str, str]] = {n: {} for n in names}
    for r in range(a.rounds):
        for isa in isas:
            for n in names:
                got = time_one(a.run_dir, n, isa, a.runs)
                if "error" in got:
                    print(f"  {n} with {isa}: {got['error']}")
                    continue
                cells[n][isa].append(got["ms"])
                ran[n][isa] = got["ran"]
                print(f"  round {r + 1}: {n} with oneDNN ISA {isa}: {got['ms']:.2f} ms ({got['ran']})")
    med = {n: {i: round(statistics.median(v), 2) for i, v in by.items() if v} for n, by in cells.items()}
    print("\n| variant | " + " | ".join(f"ISA {i} ms" for i in isas) + " |")
    print("| --- |" + " --- |" * len(isas))
    for n in names:
        print(f"| {n} | " + " | ".join(str(med[n].get(i, "")) for i in isas) + " |")
    base = next((n for n in names if n.endswith("fp16")), None)
    ratios = {}
    if base:
        for n in (x for x in names if x != base):  # each against fp16 with no cap, and with the same cap
            for i in isas:
                for j in dict.fromkeys([isas[0], i]):
                    if med[n].get(i) and med[base].get(j):
                        ratios[f"{base} ({j}) / {n} ({i})"] = round(med[base][j] / med[n][i], 3)
        for k, v in ratios.items():
            print(f"  speed of {k.split(' / ')[1]} against {k.split(' / ')[0]}: {v:.2f}x")
    out = REPO_ROOT / "results" / "openvino-isa" / machine_id(machine()) / f"{a.run_dir.parent.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps({"machine": describe(machine()), "machine_id": machine_id(machine()), "run": str(a.run_dir.resolve().relative_to(REPO_ROOT))
                                  if a.run_dir.resolve().is_relative_to(REPO_ROOT) else str(a.run_dir),
                                  "rounds": a.rounds, "runs": a.runs, "median_ms": med, "runs_ms": cells,
                                  "precision_ran": ran, "ratios": ratios}, indent=1))
    print(f"written: {out.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
