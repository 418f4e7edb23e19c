"""Benchmark: variants per hour on a real Ray cluster with one and with two nodes (127.0.0.1 only),
and a paper estimate of a full COCO val2017 matrix from a run's measured per-image costs.

    python tests/bench_ray.py [--config configs/smoke.yaml]      # 1 node, then 2 nodes, side by side
    python tests/bench_ray.py --estimate results/default/<machine> --images 5000 --nodes 1,2,4,8

Each node is started with one CPU slot, so one node runs one task at a time and two nodes two.
Both runs start from empty folders: the run folder and every node's scratch exports are removed
first. Prints figures; asserts nothing about speed (machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from raycluster import LocalCluster  # noqa: E402

from yoloq.paths import REPO_ROOT  # noqa: E402
from yoloq.provenance import describe, machine  # noqa: E402


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines() if x.strip()]


def one(config: str, nodes: int, shard: int) -> tuple[float, int]:
    """Wall seconds of ``yoloq run CONFIG --ray`` on ``nodes`` fresh nodes, and the variants it ran ok."""
    shutil.rmtree(Path(tempfile.gettempdir()) / "yoloq-ray", ignore_errors=True)
    out = Path(tempfile.mkdtemp(prefix=f"bench-ray-{nodes}-"))
    c = LocalCluster(limit_s=3600)
    try:
        for k in range(nodes):
            c.start("head" if k == 0 else f"node{k}", cpus=1)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "yoloq", "run", config, "--ray", c.address, "--out", str(out),
                               "--shard-images", str(shard)], cwd=REPO_ROOT, env=c.env(), capture_output=True,
                              text=True, timeout=3600)
        wall = time.perf_counter() - t0
    finally:
        c.stop()
    if proc.returncode not in (0, 1):
        raise SystemExit(proc.stderr[-3000:])
    ok = sum(r["status"] == "ok" for r in _records(out))
    return wall, ok


def estimate(run_dir: Path, images: int, nodes: list[int]) -> None:
    """Per variant: export seconds + per-image accuracy cost x ``images`` + its latency pass; spread on N nodes."""
    recs = [r for r in _records(run_dir) if r["status"] == "ok"]
    m = recs[0]["machine"]
    print(f"from {run_dir} ({len(recs)} variants; measured on {describe(m)})")
    work, longest = 0.0, 0.0
    print(f"| variant | export s | s / image | accuracy s at {images} images | latency s |")
    print("| --- | --- | --- | --- | --- |")
    for r in recs:
        t = r["timings_s"]
        per_image = t.get("evaluate", 0.0) / max(r["metrics"]["images"], 1)
        acc = per_image * images
        lat = t.get("latency", 0.0)
        work += t.get("export", 0.0) + acc
        longest = max(longest, t.get("export", 0.0))
        print(f"| {r['name']} | {t.get('export', 0):.1f} | {per_image:.3f} | {acc:.0f} | {lat:.1f} |")
    latency = max((r["latency"].get("pass_seconds", 0.0) for r in recs), default=0.0)
    print(f"\nexport + accuracy work: {work / 3600:.2f} node-hours; one side-by-side latency pass: {latency:.0f} s")
    print("| nodes | wall (export and accuracy spread, + latency pass) |")
    print("| --- | --- |")
    for n in nodes:
        wall = max(work / n, longest) + latency
        print(f"| {n} | {wall / 60:.0f} min |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--shard-images", type=int, default=4)
    ap.add_argument("--estimate", type=Path, help="a run folder: print the paper estimate instead")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--nodes", default="1,2,4,8")
    a = ap.parse_args()
    if a.estimate:
        estimate(a.estimate, a.images, [int(x) for x in a.nodes.split(",")])
        return
    print(f"machine: {describe(machine())} ({machine()['id']}); config {a.config}; every node 1 CPU slot")
    rows = []
    for n in (1, 2):
        wall, ok = one(a.config, n, a.shard_images)
        rows.append((n, wall, ok))
        print(f"{n} node(s): {ok} variants in {wall:.1f} s = {ok / wall * 3600:.0f} variants per hour", flush=True)
    (n1, w1, k1), (n2, w2, k2) = rows
    print(f"two nodes / one node: {(k2 / w2) / (k1 / w1):.2f}x variants per hour")


if __name__ == "__main__":
    main()
