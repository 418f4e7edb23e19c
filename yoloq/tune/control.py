"""Accuracy control: where no candidate of a variant keeps the budget on the tuning images, keep the fewest blocks in
float that reach it (as NNCF's ``quantize_with_accuracy_control`` reverts the most sensitive groups until the metric
comes back).

The blocks are ranked again under the most accurate candidate's own settings (its ranges, rounding and scope, in
the format's arithmetic: ``Backend.sensitivity``), then candidates keeping the worst 1, 2, 4 ... of them in float
on top of those settings are scored on every tuning image until one keeps the budget (or ``max_float_blocks`` is
reached); the count between the last short one and the first that keeps it is then found by bisection. Every
candidate tried stays in tune.md with its figures; each block counts as one setting changed, so the rule prefers the
fewest.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from yoloq.backends.base import ExportContext
from yoloq.backends.registry import get_backend, resolve_variant
from yoloq.progress import say, step
from yoloq.tune.rule import Trial, leader_of


def _candidate(search: Any, inputs: Any, base: Trial, ranked: list[Any], n: int) -> Trial:
    v = search.variants[base.name]
    backend = get_backend(v.format)
    opts = dict(v.options)
    for k, extra in backend.keep_float(ranked[:n]).items():
        opts[k] = [*(opts.get(k) or []), *extra]
    name = f"{base.candidate}+worst{n}"
    label = f"{base.variant}@{name}"
    search.variants[label] = resolve_variant(dataclasses.replace(v, name=label, options=opts, target=None),
                                             f"tune candidate {label}")
    search.run_cfg = dataclasses.replace(search.run_cfg, variants=tuple(search.variants.values()))
    blocks = ", ".join(f"{g.group} {g.sqnr_db:.1f} dB" for g in ranked[:n])
    t = Trial(label, base.variant, base.format, name, {k: opts[k] for k in backend.keep_float(ranked[:n])},
              f"accuracy control: {base.candidate}'s settings with the {n} blocks ranked worst under them in float "
              f"({blocks})", base.changed + n)
    search.trials.append(t)
    return t


def _rank(search: Any, inputs: Any, base: Trial) -> list[Any]:
    v = search.variants[base.name]
    backend = get_backend(v.format)
    ctx = ExportContext(inputs.source, v, search.cfg.imgsz, inputs.calibration,
                        search.out_dir / "artifacts" / v.label, threads=search.cfg.latency.threads)
    n_img = search.tune.sensitivity_images
    with step(f"accuracy control: rank the blocks of {base.name} ({n_img} calibration images)"):
        return [g for g in backend.in_int8(ctx, backend.sensitivity(ctx, "block", n_img)) if math.isfinite(g.sqnr_db)]


def accuracy_control(search: Any, inputs: Any, items: list[Any]) -> None:
    """For each tuned variant none of whose scored candidates keeps the budget: add and score fallback candidates
    on ``items`` (all tuning images) as the module docstring says, then recompute every candidate's intervals
    against the variant's leader."""
    budget = search.tune.min_retention
    for v in search.targets:
        group = [t for t in search.trials if t.variant == v.label and t.status == "ok"]
        backend = get_backend(v.format)
        if not group or any(t.meets(budget) for t in group) or not backend.supports_sensitivity \
                or not backend.keep_float([]):
            continue
        base = max(group, key=lambda t: (t.retention or 0.0, t.agreement or 0.0))
        try:
            ranked = _rank(search, inputs, base)
        except Exception as e:  # noqa: BLE001 - the search's other results stand
            say(f"  {v.label}: no accuracy control ({type(e).__name__}: {e})")
            continue
        tried: dict[int, Trial] = {}

        def score(n: int) -> bool:
            t = tried[n] = _candidate(search, inputs, base, ranked, n)
            search._round(inputs, items, [t], final=False)
            say(f"  accuracy control {t.name}: " + (f"keeps {100 * t.retention:.1f}%" if t.retention is not None
                                                     else t.status))
            return t.status == "ok" and t.meets(budget)

        top = min(search.tune.max_float_blocks, len(ranked))
        n, short, enough = 1, 0, None
        while n <= top:
            if score(n):
                enough = n
                break
            short, n = n, (n * 2 if n * 2 <= top or n == top else top)
            if short == top:
                break
        while enough is not None and enough - short > 1:  # the fewest between the last short and the first enough
            mid = (short + enough) // 2
            if score(mid):
                enough = mid
            else:
                short = mid
        final = [t for t in search.trials if t.variant == v.label and t.status == "ok"]
        search._round(inputs, items, final, final=True)
        lead = leader_of(final, budget)
        say(f"  accuracy control for {v.label}: " + (f"{enough} block(s) in float keep the budget"
                                                      if enough else f"no count up to {top} keeps the budget") +
            (f"; the leader is {lead.candidate}" if lead else ""))
