"""What a search leaves: ``tuned.yaml`` (the config with each variant's chosen options and the evidence beside
them), ``tune.md`` (every candidate and why it lost) and ``tune.json`` (the same as data)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import yaml

from yoloq.provenance import describe
from yoloq.records import write_atomic
from yoloq.tune.rule import SPEED_TIE, Trial


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(ci: dict[str, Any]) -> str:
    if not ci:
        return "-"
    return f"{ci['drop']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]{'*' if ci.get('significant') else ''}"


def _opts(o: dict[str, Any]) -> str:
    return (", ".join(f"{k}: {v}" for k, v in o.items()) or "(defaults)").replace("|", "\\|")


def evidence(t: Trial | None, variant: str) -> str:
    """One comment line on why a variant carries its options."""
    if t is None:
        return f"{variant}: no INT8 setting ran faster here than the backend's float variant; left as it was"
    speed = (f"p50 {t.p50_ms:.1f} ms against {t.float_name} {t.float_p50_ms or 0:.1f} ms" if t.p50_ms is not None
             else "not timed here")
    return (f"{variant}: tune chose '{t.candidate}' on {t.images} tuning images: keeps {_pct(t.retention)}, drop "
            f"{_ci(t.drop)}, agreement {t.agreement:.4f}, {speed}; {t.why}")


def tuned_yaml(config_path: Path, chosen: dict[str, Trial | None], dest: Path, output: str) -> str:
    """The config at ``config_path`` with each tuned variant's options set to its chosen candidate's, the
    evidence as a comment above it, its output folder ``output``, and its paths valid from ``dest``'s folder."""
    raw = yaml.safe_load(config_path.read_text()) or {}
    base, here = config_path.resolve().parent, dest.resolve().parent
    model = str(raw.get("model", ""))
    if model and (base / model).exists() and not Path(model).is_absolute():
        raw["model"] = os.path.relpath(base / model, here)
    raw["output"] = output
    variants = raw.pop("variants")
    head = yaml.safe_dump({k: v for k, v in raw.items()}, sort_keys=False, width=110)
    lines = [f"# written by yoloq tune from {config_path.name}: each tuned INT8 variant carries the options chosen "
             f"on the tuning split", head.rstrip(), "variants:"]
    for v in variants:
        label = v.get("name") or f"{v['format']}-{v.get('precision', 'fp32')}" + \
            ("" if v.get("device", "cpu") == "cpu" else f"-{str(v['device']).replace(':', '')}")
        if label in chosen:
            t = chosen[label]
            lines.append(f"  # {evidence(t, label)}")
            if t is not None:
                v = dict(v) | {"options": dict(v.get("options") or {}) | t.options}
                if not v["options"]:
                    v.pop("options")
        lines.append("  - " + yaml.safe_dump(v, default_flow_style=True, width=10_000, sort_keys=False).strip())
    return "\n".join(lines) + "\n"


def markdown(trials: list[Trial], chosen: dict[str, Trial | None], facts: dict[str, Any]) -> str:
    """``tune.md``: per tuned variant, every candidate with its figures and verdict."""
    out = [f"# yoloq tune: {facts['model']} on {facts['tuning']}\n",
           f"Machine: {describe(facts['machine'])} (`{facts['machine']['id']}`). Search: {facts['minutes']:.1f} min. "
           f"Candidates scored on {facts['first']} tuning images, the better half and those not told from the best "
           f"on all {facts['images']}; the reference ({facts['reference']}) keeps mAP50-95 {facts['ref_map']:.4f} "
           "there. No evaluation image was read.\n",
           "Kept: candidate mAP50-95 / reference. Drop: reference - candidate with its 95% paired bootstrap interval "
           "(* excludes 0). Agrees: mAP50-95 of the candidate's detections against the reference's confident ones "
           "(score >= 0.25). vs best: the best candidate minus this one, for agreement and mAP, with their paired "
           "intervals. p50: end to end, timed side by side with the backend's float variants in one pass. Export min, peak GB: "
           "what making the candidate's export cost here (wall minutes; the peak resident memory of what made it, where "
           "the backend measures it: a toolkit's process tree, or yoloq's process for its own recovery steps).\n",
           "Rule: only candidates faster than their backend's fastest float variant; the best one (budget, then "
           "agreement); of the candidates neither interval tells from it, the one with the fewest settings changed "
           f"(then the faster by more than {SPEED_TIE:.0%}, then the smaller, then the one that agrees more).\n"]
    for variant, win in chosen.items():
        out.append(f"## {variant}\n")
        out.append(f"**Chosen: {win.candidate}** ({_opts(win.options)})\n" if win else
                   "**Nothing recommended**: no candidate ran faster here than the backend's float variant.\n")
        out += ["| candidate | options | changed | images | mAP50-95 | kept | drop [95% CI] | agrees | vs best: agrees "
                "| vs best: mAP | p50 ms | float p50 ms | MB | export min | peak GB | verdict |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for t in [t for t in trials if t.variant == variant]:
            cells = [t.candidate, _opts(t.options), str(t.changed), str(t.images or "-"),
                     "-" if t.map50_95 is None else f"{t.map50_95:.4f}", _pct(t.retention), _ci(t.drop),
                     "-" if t.agreement is None else f"{t.agreement:.4f}", _ci(t.vs_leader.get("agreement") or {}),
                     _ci(t.vs_leader.get("map") or {}), "-" if t.p50_ms is None else f"{t.p50_ms:.1f}",
                     "-" if t.float_p50_ms is None else f"{t.float_p50_ms:.1f} ({t.float_name})",
                     "-" if t.size_mb is None else f"{t.size_mb:.2f}",
                     "-" if t.export_s is None else f"{t.export_s / 60:.1f}",
                     "-" if t.peak_mb is None else f"{t.peak_mb / 1024:.1f}", t.verdict or t.reason]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def write_all(out_dir: Path, config_path: Path, trials: list[Trial], chosen: dict[str, Trial | None],
              facts: dict[str, Any], output: str) -> dict[str, Path]:
    """Write ``tuned.yaml``, ``tune.md`` and ``tune.json`` into ``out_dir`` (atomically); returns their paths."""
    paths = {"tuned": out_dir / "tuned.yaml", "md": out_dir / "tune.md", "json": out_dir / "tune.json"}
    write_atomic(paths["tuned"], tuned_yaml(config_path, chosen, paths["tuned"], output))
    write_atomic(paths["md"], markdown(trials, chosen, facts))
    data = facts | {"chosen": {k: (t.name if t else None) for k, t in chosen.items()},
                    "trials": [dataclasses.asdict(t) for t in trials]}
    write_atomic(paths["json"], json.dumps(data, indent=1, default=str))
    return paths
