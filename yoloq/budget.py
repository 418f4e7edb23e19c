"""The accuracy budget: does each non-reference variant keep enough of the reference's mAP50-95?"""

from __future__ import annotations

from typing import Any, Iterable

from yoloq.config import BudgetConfig
from yoloq.records import Record


def verdict(record: Record, ref: Record | None, budget: BudgetConfig) -> dict[str, Any]:
    """Judge one record against the budget.

    Returns:
        ``pass`` (True/False, or None when not judged: no budget, the reference itself, skipped),
        ``retention``, ``drop`` and the ``rule`` applied, in words.
    """
    rules = []
    if budget.min_retention is not None:
        rules.append(f"keep >= {budget.min_retention:.1%} of {ref.name if ref else 'reference'}")
    if budget.max_map_drop is not None:
        rules.append(f"drop <= {budget.max_map_drop:.4f} mAP50-95")
    out: dict[str, Any] = {"pass": None, "rule": "; ".join(rules), "retention": None, "drop": None}
    if not budget.active or ref is None or record.name == ref.name or record.status == "skipped":
        return out
    if not record.ok:
        return out | {"pass": False, "why": "variant failed"}
    ref_map, var_map = ref.map or 0.0, record.map or 0.0
    if ref_map <= 0 and budget.min_retention is not None:  # nothing to keep a share of: not judged
        return out | {"why": f"not judged: {ref.name} scores mAP50-95 0 (an untrained model?), so no share "
                             f"of it can be kept"}
    retention = var_map / ref_map if ref_map else 0.0
    drop = ref_map - var_map
    ok = (budget.min_retention is None or retention >= budget.min_retention) and \
         (budget.max_map_drop is None or drop <= budget.max_map_drop)
    return out | {"pass": ok, "retention": retention, "drop": drop}


def label(v: dict[str, Any] | None) -> str:
    """PASS / FAIL / '' for a verdict."""
    if not v or v.get("pass") is None:
        return ""
    return "PASS" if v["pass"] else "FAIL"


def print_budget(records: Iterable[Record]) -> bool:
    """Print PASS/FAIL per judged variant; return whether every judged variant passed."""
    ok = True
    for r in records:
        v = r.budget or {}
        if v.get("pass") is None:
            if v.get("why"):
                print(f"budget n/a  {r.name}: {v['why']}")
            continue
        ok &= bool(v["pass"])
        detail = v.get("why") or f"keeps {v['retention']:.1%}, drop {v['drop']:+.4f}"
        print(f"budget {'PASS' if v['pass'] else 'FAIL'}  {r.name}: {detail} (rule: {v['rule']})")
    return ok
