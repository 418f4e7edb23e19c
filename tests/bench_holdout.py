"""Benchmark: choose each backend's INT8 default on held-out train images, never on evaluation images.

    python tests/bench_holdout.py [--folds configs/int8-holdout-a.yaml configs/int8-holdout-b.yaml]
                                  [--out results/int8-holdout] [--no-run]

Runs every fold config (each scores candidate INT8 settings against torch FP32 on train2017 images that
its calibration did not see; the two default folds swap coco-mini train2017 and coco128 train2017), then
reads their records only and writes ``OUT/<machine>/selection.{md,json}``: per candidate, its settings
(those that differ from the backend's defaults), mAP50-95, retention and paired-bootstrap drop interval
in each fold, its worst fold and its retention over all folds (mean weighted by each fold's image
count). Per backend the candidate whose *worst* fold keeps the most is chosen (a setting must hold on
every held-out set, not on average; of equal ones, the one with the fewest settings changed) among those
whose file is at most ``MAX_SIZE`` of the same backend's FP32 (yoloq's INT8 size bar; a backend none of
whose candidates meets it: its smallest file); one that failed in any fold is not eligible. Every figure
names this machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from yoloq.backends.registry import backend_class
from yoloq.config import load_config
from yoloq.paths import REPO_ROOT
from yoloq.provenance import describe, machine
from yoloq.records import RecordStore, write_atomic

FOLDS = ("configs/int8-holdout-a.yaml", "configs/int8-holdout-b.yaml")
MAX_SIZE = 0.30


def fold_records(config: str, run: bool) -> tuple[str, Path, dict]:
    """Run one fold (resuming what is recorded) and return its name, folder and records by name."""
    cfg = load_config(REPO_ROOT / config)
    out = REPO_ROOT / cfg.output / machine()["id"]
    if run:
        subprocess.run([sys.executable, "-m", "yoloq", "run", config, "--out", str(out)], cwd=REPO_ROOT, check=True)
    records = {r.name: r for r in RecordStore(out).all()}
    if not records:
        raise SystemExit(f"bench_holdout: no records in {out} (run without --no-run)")
    return Path(config).stem, out, records


def select(folds: list[tuple[str, Path, dict]]) -> dict:
    """Each candidate's retention per fold and pooled; the best per backend."""
    rows = {}
    for fold, _, recs in folds:
        ref = next((r for r in recs.values() if r.format == "torch" and r.ok), None)
        if ref is None:
            raise SystemExit(f"bench_holdout: fold {fold} has no ok torch FP32 record to measure retention against")
        ref_map = ref.metrics["map50_95"]
        fp32 = {r.format: r.size_mb for r in recs.values() if r.precision == "fp32" and r.ok}
        for r in recs.values():
            if r.precision != "int8":
                continue
            specs = backend_class(r.format).options
            meant = {k: r.options.get(k, spec.absent(stored=True)) for k, spec in specs.items()
                     if k in r.options or spec.predates}
            changed = {k: v for k, v in meant.items() if v != specs[k].default}
            row = rows.setdefault(r.name, {"format": r.format, "options": changed, "folds": {},
                                           "size": r.size_mb / fp32[r.format] if fp32.get(r.format) else None})
            if not r.ok:
                row["folds"][fold] = {"status": r.status, "reason": r.reason}
                continue
            ci = r.metrics.get("map_drop_ci") or {}
            row["folds"][fold] = {"status": "ok", "images": r.metrics["images"], "map50_95": r.metrics["map50_95"],
                                  "ref_map50_95": ref_map, "retention": r.metrics["map50_95"] / ref_map,
                                  "drop": ci.get("drop"), "lo": ci.get("lo"), "hi": ci.get("hi"),
                                  "significant": ci.get("significant")}
    for row in rows.values():
        ok = [f for f in row["folds"].values() if f["status"] == "ok"]
        n = sum(f["images"] for f in ok)
        every = len(ok) == len(folds) and n
        row["pooled_retention"] = sum(f["retention"] * f["images"] for f in ok) / n if every else None
        row["worst_retention"] = min(f["retention"] for f in ok) if every else None
    chosen: dict[str, str] = {}
    for name, row in rows.items():
        best = chosen.get(row["format"])
        smallest = min((x["size"] for x in rows.values() if x["format"] == row["format"] and x["size"]), default=0)
        if row["size"] is not None and row["size"] > max(MAX_SIZE, smallest) + 5e-4:
            continue
        if row["worst_retention"] is None:
            continue
        # ties (the same setting written two ways scores the same): the one with fewer non-default options
        if best is None or (row["worst_retention"], -len(row["options"])) > \
                (rows[best]["worst_retention"], -len(rows[best]["options"])):
            chosen[row["format"]] = name
    return {"candidates": rows, "chosen": chosen}


def _settings(options: dict) -> str:
    def text(v: object) -> str:
        return "[" + ", ".join(map(str, v)) + "]" if isinstance(v, list) else str(v)

    return ", ".join(f"{k}: {text(v)}" for k, v in options.items()).replace("|", "\\|") or "(defaults)"


def _first(records: dict):  # noqa: ANN202 - a Record
    return next(r for r in records.values() if r.ok and r.precision == "int8")


def markdown(sel: dict, folds: list[tuple[str, Path, dict]], facts: dict) -> str:
    names = [f for f, _, _ in folds]
    lines = ["# INT8 settings chosen on held-out train2017 images\n",
             f"Machine: {facts['machine']}. Folds: " + "; ".join(
                 f"`{f}`: scored on {_first(r).dataset.get('name')} {_first(r).dataset.get('split')} "
                 f"({_first(r).metrics.get('images')} images), calibrated on "
                 f"{' + '.join(_first(r).calibration.get('sources', []))}" for f, _, r in folds) + ".",
             "Retention: the candidate's mAP50-95 / torch FP32's on the same images; drop with its 95% paired "
             "bootstrap interval (* excludes 0). No val2017 image is used.\n",
             "| candidate | options | " + " | ".join(f"{n} mAP | {n} kept | {n} drop [95% CI]" for n in names)
             + " | worst kept | pooled kept | size vs FP32 | chosen |",
             "| --- | --- | " + " | ".join("--- | --- | ---" for _ in names) + " | --- | --- | --- | --- |"]
    for name, row in sorted(sel["candidates"].items(), key=lambda kv: (kv[1]["format"], kv[0])):
        cells = []
        for n in names:
            f = row["folds"].get(n, {"status": "missing"})
            if f["status"] != "ok":
                cells += [f["status"], "", ""]
                continue
            star = "*" if f["significant"] else ""
            cells += [f"{f['map50_95']:.4f}", f"{100 * f['retention']:.1f}%",
                      f"{f['drop']:+.4f} [{f['lo']:+.4f}, {f['hi']:+.4f}]{star}" if f["drop"] is not None else ""]
        pooled, worst = ("-" if row[k] is None else f"{100 * row[k]:.1f}%" for k in ("pooled_retention",
                                                                                  "worst_retention"))
        size = "-" if row["size"] is None else f"{row['size']:.3f}x"
        chosen = "**yes**" if sel["chosen"].get(row["format"]) == name else ""
        lines.append(f"| {name} | {_settings(row['options'])} | " + " | ".join(cells)
                     + f" | {worst} | {pooled} | {size} | {chosen} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", nargs="+", default=list(FOLDS))
    ap.add_argument("--out", default="results/int8-holdout")
    ap.add_argument("--no-run", action="store_true", help="only read the folds' records")
    args = ap.parse_args()
    folds = [fold_records(c, not args.no_run) for c in args.folds]
    sel = select(folds)
    facts = {"machine": describe(machine()), "folds": {f: str(p.relative_to(REPO_ROOT)) for f, p, _ in folds}}
    out = REPO_ROOT / args.out / machine()["id"]
    text = markdown(sel, folds, facts)
    write_atomic(out / "selection.md", text)
    write_atomic(out / "selection.json", json.dumps({**facts, **sel}, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
