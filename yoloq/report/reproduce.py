"""Two runs of one config on two machines, variant by variant: is every mAP the same where it should be?

mAP must be identical where the same precision ran with the same library versions and the same kernels (CPU
inference is deterministic). It may differ, explained, where the machine changed what ran (OpenVINO computes
"fp16" and INT8's float ops in BF16 on CPUs with AVX-512 BF16 or AMX), where FP32 kernels summed in another
order (float rounding: within :func:`rounding_tolerance`), where INT8 or FP16 kernels follow other instructions
(VNNI or not, AVX-512 or AVX2, BF16, AMX: named, with the size of the change), or where a library version
differs. Anything else is a MISMATCH. Where both runs kept their detections, their agreement is shown too.
Speed-ups are shown side by side: they belong to each machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yoloq.provenance import describe, same_machine
from yoloq.records import Record, RecordStore, write_atomic
from yoloq.report.table import markdown_table


def _versions_differ(a: Record, b: Record) -> list[str]:
    """The library versions (exporters, runtimes, evaluator) that differ between two records' runs."""
    libs = sorted(set(a.versions) | set(b.versions) - {"yoloq"})
    return [f"{lib} {a.versions.get(lib)} -> {b.versions.get(lib)}" for lib in libs
            if a.versions.get(lib) != b.versions.get(lib)]


def _x(r: Record | None) -> str:
    v = (r.speedup or {}).get("vs_fp32") if r and r.ok else None
    return f"{v:.2f}x" if v else ""


# the instruction-set features that change which integer / low-precision kernels a CPU runs
KERNEL_ISA = {"avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
              "avx512_bf16": "AVX-512 BF16", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16",
              "asimddp": "Arm dot-product", "i8mm": "Arm i8mm"}


def isa_difference(a: Record, b: Record) -> list[str]:
    """The kernel-choosing ISA features one machine has and the other lacks (there -> here)."""
    x, y = set(a.machine.get("isa") or []), set(b.machine.get("isa") or [])
    return [f"{'+' if f in y else '-'}{name}" for f, name in KERNEL_ISA.items() if (f in x) != (f in y)]


def rounding_tolerance(r: Record) -> float:
    """The largest mAP50-95 change float rounding alone can make: one detection moved across the 5 score decimals or
    0.001 px that COCO results keep swaps with a neighbour below its class's top 10 at one IoU threshold; that moves
    the class's precision there by at most 1/10 over at most one recall step, so its AP by at most 1/10, and mAP
    (the mean over K classes x 10 thresholds) by at most 1 / (10 x K x 10). FP32 kernels that sum in another order
    (AVX2 against AVX-512) differ by such swaps (1e-6 seen); a real change moves far more boxes."""
    k = max(1, len(r.metrics.get("per_class") or {}))
    return 1.0 / (10 * k * 10)


def run_agreement(old_dir: Path, new_dir: Path, name: str) -> float | None:
    """mAP50-95 of this run's detections against the other run's confident ones, when both runs kept them."""
    from yoloq.agreement import StoredDetections, agreement
    from yoloq.passes import detections_path

    a, b = detections_path(old_dir, name), detections_path(new_dir, name)
    if not (a.is_file() and b.is_file()):
        return None
    try:
        return agreement(StoredDetections.load(a), StoredDetections.load(b))["map50_95"]
    except ValueError:
        return None


def verdict(a: Record, b: Record, agrees: float | None = None) -> tuple[str, str, bool]:
    """(verdict, why, mismatch) for one variant measured there (``a``) and here (``b``)."""
    delta, isa = b.map - a.map, isa_difference(a, b)
    ran_a, ran_b = a.runtime.get("precision_ran", ""), b.runtime.get("precision_ran", "")
    same_dets = agrees is None or agrees >= 0.999
    seen = "" if agrees is None else f"; the two runs' detections agree {agrees:.4f}"
    if delta == 0:
        return "identical", "", False
    if ran_a != ran_b:
        return "differs, explained", f"ran {ran_a} there, {ran_b} here: {delta:+.6f}{seen}", False
    if abs(delta) <= rounding_tolerance(a) and same_dets and a.precision == "fp32":
        return ("identical within float rounding", f"{delta:+.1e} <= {rounding_tolerance(a):.1e}, what one "
                f"detection's rounding can move mAP50-95{seen}", False)
    if isa and a.precision in ("int8", "fp16"):
        return ("differs, explained", f"{a.precision} kernels follow the CPU's instructions ({', '.join(isa)} here): "
                f"{delta:+.4f}{seen}", False)
    if diff := _versions_differ(a, b):
        return "differs, explained", "; ".join(diff) + f": {delta:+.4f}{seen}", False
    why = "same precision, kernels and versions, different mAP" if not isa else \
        f"{a.precision} beyond float rounding ({delta:+.4f} > {rounding_tolerance(a):.1e})"
    return "MISMATCH", why + seen, True


def verdicts(old: list[Record], new: list[Record], old_dir: Path | None = None,
             new_dir: Path | None = None) -> list[dict[str, Any]]:
    """Per variant of the old run: both mAPs, what ran on each machine, and the verdict."""
    by_new = {r.name: r for r in new}
    out = []
    for a in old:
        b = by_new.get(a.name)
        row: dict[str, Any] = {"variant": a.name, "mAP there": a.map, "mAP here": b.map if b else None,
                               "ran there": a.runtime.get("precision_ran", ""),
                               "ran here": b.runtime.get("precision_ran", "") if b else "",
                               "x fp32 there": _x(a), "x fp32 here": _x(b)}
        if b is None or a.map is None or b.map is None:  # compared wherever both measured accuracy
            row |= {"verdict": "not compared", "why": f"status there {a.status}, here {b.status if b else 'absent'}",
                    "mismatch": False}
        else:
            agrees = run_agreement(old_dir, new_dir, a.name) if old_dir and new_dir else None
            v, why, bad = verdict(a, b, agrees)
            if a.status != b.status:  # e.g. a Ray target's variant: its accuracy here, its latency on the device
                why = "; ".join(x for x in (why, f"status there {a.status}, here {b.status}") if x)
            row |= {"verdict": v, "why": why, "mismatch": bad}
        out.append(row)
    return out


def reproduce_report(old_dir: Path, new_dir: Path) -> tuple[str, bool]:
    """Write ``reproduce.md`` into ``new_dir`` comparing it with ``old_dir``.

    Returns:
        The table and whether any mAP differs where it should be identical.
    """
    old, new = RecordStore(old_dir).all(), RecordStore(new_dir).all()
    rows = verdicts(old, new, old_dir, new_dir)
    fmt = [{k: (f"{v:.4f}" if isinstance(v, float) else "" if v is None else str(v)) for k, v in r.items()
            if k != "mismatch"} for r in rows]
    table = markdown_table(fmt, tuple(fmt[0])) if fmt else "(no records to compare)"
    m_old = next((r.machine for r in old), {})
    m_new = next((r.machine for r in new), {})
    same = "the same machine fingerprint" if same_machine(m_old, m_new) else "different machines"
    text = (f"# yoloq reproduce\n\n- there: `{old_dir}`: {describe(m_old)}\n- here: `{new_dir}`: "
            f"{describe(m_new)}\n- {same}\n\nmAP50-95 must be identical where the same precision ran with the "
            f"same library versions and kernels; FP32 may differ by float rounding (at most 1 / (100 x classes): one "
            f"detection swapped below its class's top 10), INT8 and FP16 by the kernels a CPU's instructions choose "
            f"(VNNI, AVX-512, BF16, AMX); anything else is a MISMATCH (exit 1). Speed-ups (x fp32, p50 against "
            f"the same backend's FP32, timed side by side) belong to each machine.\n\n{table}\n")
    write_atomic(new_dir / "reproduce.md", text)
    return text, any(r["mismatch"] for r in rows)
