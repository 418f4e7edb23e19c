"""Two runs of one config on two machines, variant by variant: is every mAP the same where it should be?

mAP must be identical where the same precision ran with the same library versions (CPU inference is
deterministic; FP32 and INT8 were bit-identical across an Intel Xeon and an AMD EPYC); where the
machine changed what ran (OpenVINO computes "fp16" and INT8's float ops in BF16 on CPUs with
AVX-512 BF16 or AMX; FP16 kernels are picked by CPU features: ONNX Runtime FP16 differed by 1e-5
mAP between those two CPUs) or a library version differs, a difference is expected and explained.
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


def verdicts(old: list[Record], new: list[Record]) -> list[dict[str, Any]]:
    """Per variant of the old run: both mAPs, what ran on each machine, and the verdict."""
    by_new = {r.name: r for r in new}
    out = []
    for a in old:
        b = by_new.get(a.name)
        row: dict[str, Any] = {"variant": a.name, "mAP there": a.map, "mAP here": b.map if b else None,
                               "ran there": a.runtime.get("precision_ran", ""),
                               "ran here": b.runtime.get("precision_ran", "") if b else "",
                               "x fp32 there": _x(a), "x fp32 here": _x(b)}
        if b is None or not (a.ok and b.ok):
            row |= {"verdict": "not compared", "why": f"status there {a.status}, here {b.status if b else 'absent'}",
                    "mismatch": False}
        elif a.map == b.map:
            row |= {"verdict": "identical", "why": "", "mismatch": False}
        elif row["ran there"] != row["ran here"]:
            row |= {"verdict": "differs, explained", "why": f"ran {row['ran there']} there, {row['ran here']} here",
                    "mismatch": False}
        elif a.precision == "fp16" and a.machine.get("isa") != b.machine.get("isa"):
            row |= {"verdict": "differs, explained", "mismatch": False,
                    "why": f"fp16 kernels are chosen by CPU features ({'/'.join(a.machine.get('isa') or ['?'])} "
                           f"there, {'/'.join(b.machine.get('isa') or ['?'])} here): {b.map - a.map:+.6f}"}
        elif diff := _versions_differ(a, b):
            row |= {"verdict": "differs, explained", "why": "; ".join(diff), "mismatch": False}
        else:
            row |= {"verdict": "MISMATCH", "why": "same precision and versions, different mAP", "mismatch": True}
        out.append(row)
    return out


def reproduce_report(old_dir: Path, new_dir: Path) -> tuple[str, bool]:
    """Write ``reproduce.md`` into ``new_dir`` comparing it with ``old_dir``.

    Returns:
        The table and whether any mAP differs where it should be identical.
    """
    old, new = RecordStore(old_dir).all(), RecordStore(new_dir).all()
    rows = verdicts(old, new)
    fmt = [{k: (f"{v:.4f}" if isinstance(v, float) else "" if v is None else str(v)) for k, v in r.items()
            if k != "mismatch"} for r in rows]
    table = markdown_table(fmt, tuple(fmt[0])) if fmt else "(no records to compare)"
    m_old = next((r.machine for r in old), {})
    m_new = next((r.machine for r in new), {})
    same = "the same machine fingerprint" if same_machine(m_old, m_new) else "different machines"
    text = (f"# yoloq reproduce\n\n- there: `{old_dir}`: {describe(m_old)}\n- here: `{new_dir}`: "
            f"{describe(m_new)}\n- {same}\n\nmAP50-95 must be identical where the same precision ran with the "
            f"same library versions; speed-ups (x fp32, p50 against the same backend's FP32, timed side by "
            f"side) belong to each machine.\n\n{table}\n")
    write_atomic(new_dir / "reproduce.md", text)
    return text, any(r["mismatch"] for r in rows)
