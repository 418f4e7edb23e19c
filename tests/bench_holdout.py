"""Benchmark: choose each backend's INT8 default on held-out train images, never on evaluation images.

    python tests/bench_holdout.py [--folds configs/int8-holdout-a.yaml configs/int8-holdout-b.yaml]
                                  [--out results/int8-holdout] [--no-run]

Runs every fold config (each scores candidate INT8 settings against torch FP32 on train2017 images that
its calibration did not see; the two default folds swap coco-mini train2017 and coco128 train2017), then
reads their records only and writes ``OUT/<machine>/selection.{md,json}``: per candidate, its settings
(those that differ from the backend's defaults), and in each fold its mAP50-95, retention, paired-bootstrap
drop interval and agreement with torch FP32's own detections (``metrics.agreement``: mAP50-95 of the
candidate's detections against the reference's with score >= 0.25 as ground truth); then its worst fold of
each and its retention over all folds (mean weighted by each fold's image count).

The rule (2026-11-23, its third revision; fixed before the recorded runs it chose from, after a scratch
measurement of agreement on nine of the candidates): per backend, among candidates
whose file is at most ``MAX_SIZE`` of the same backend's FP32 (yoloq's INT8 size bar; a backend none of
whose candidates meets it: its smallest file), that ran in every fold and whose *worst* fold keeps at least
``MIN_RETENTION`` of torch FP32's mAP (the default budget), the one whose worst fold agrees most with torch
FP32's detections; of equal ones, the one with the fewest settings changed. Where no candidate keeps
``MIN_RETENTION``, the one whose worst fold keeps the most. Why agreement and not retention decides:
retention on ~100 images moves by about a point between settings whose outputs differ only by
quantization noise, so the earlier rule (the best worst-fold retention) picked settings that the next
evaluation set did not confirm; agreement measures what quantization moved, over every confident box, and
ranks the candidates far more alike on the two folds (Spearman 0.84 against retention's 0.52, 30
candidates). Every figure names this machine.
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
MIN_RETENTION = 0.99


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
                                  "significant": ci.get("significant"),
                                  "agreement": (r.metrics.get("agreement") or {}).get("map50_95")}
    for row in rows.values():
        ok = [f for f in row["folds"].values() if f["status"] == "ok"]
        n = sum(f["images"] for f in ok)
        every = len(ok) == len(folds) and n
        row["pooled_retention"] = sum(f["retention"] * f["images"] for f in ok) / n if every else None
        row["worst_retention"] = min(f["retention"] for f in ok) if every else None
        agree = [f["agreement"] for f in ok]
        row["worst_agreement"] = min(agree) if every and None not in agree else None
    chosen: dict[str, str] = {}
    for name, row in rows.items():
        best = chosen.get(row["format"])
        smallest = min((x["size"] for x in rows.values() if x["format"] == row["format"] and x["size"]), default=0)
        if row["size"] is not None and row["size"] > max(MAX_SIZE, smallest) + 5e-4:
            continue
        if row["worst_retention"] is None:
            continue
        # ties (the same setting written two ways scores the same): the one with fewer non-default options
        if best is None or _rank(row) > _rank(rows[best]):
            chosen[row["format"]] = name
    return {"candidates": rows, "chosen": chosen, "rule": {"min_retention": MIN_RETENTION, "max_size": MAX_SIZE}}


def _rank(row: dict) -> tuple:
    """Keeps the budget on every fold first; then the worst fold's agreement (its retention where none keeps
    the budget); then the fewest changed settings."""
    meets = row["worst_retention"] >= MIN_RETENTION
    score = (row["worst_agreement"] if row["worst_agreement"] is not None else -1.0) if meets \
        else row["worst_retention"]
    return meets, score, -len(row["options"])


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
             "bootstrap interval (* excludes 0); agrees: mAP50-95 of its detections against torch FP32's with score "
             ">= 0.25 as ground truth. No val2017 image is used. Chosen per backend: within the size bar, worst fold "
             f"keeping >= {100 * MIN_RETENTION:.0f}%, the highest worst-fold agreement.\n",
             "| candidate | options | " + " | ".join(f"{n} mAP | {n} kept | {n} drop [95% CI] | {n} agrees"
                                                  for n in names)
             + " | worst kept | pooled kept | worst agrees | size vs FP32 | chosen |",
             "| --- | --- | " + " | ".join("--- | --- | --- | ---" for _ in names) + " | --- | --- | --- | --- | --- |"]
    for name, row in sorted(sel["candidates"].items(), key=lambda kv: (kv[1]["format"], kv[0])):
        cells = []
        for n in names:
            f = row["folds"].get(n, {"status": "missing"})
            if f["status"] != "ok":
                cells += [f["status"], "", "", ""]
                continue
            star = "*" if f["significant"] else ""
            cells += [f"{f['map50_95']:.4f}", f"{100 * f['retention']:.1f}%",
                      f"{f['drop']:+.4f} [{f['lo']:+.4f}, {f['hi']:+.4f}]{star}" if f["drop"] is not None else "",
                      "-" if f.get("agreement") is None else f"{f['agreement']:.4f}"]
        pooled, worst = ("-" if row[k] is None else f"{100 * row[k]:.1f}%" for k in ("pooled_retention",
                                                                                  "worst_retention"))
        agrees = "-" if row["worst_agreement"] is None else f"{row['worst_agreement']:.4f}"
        size = "-" if row["size"] is None else f"{row['size']:.3f}x"
        chosen = "**yes**" if sel["chosen"].get(row["format"]) == name else ""
        lines.append(f"| {name} | {_settings(row['options'])} | " + " | ".join(cells)
                     + f" | {worst} | {pooled} | {agrees} | {size} | {chosen} |")
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
