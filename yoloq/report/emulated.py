"""Each variant scored on x86 and on an emulated Arm CPU, side by side: difference, agreement and a verdict.

The verdict reads like ``yoloq reproduce``'s: identical detections, float rounding only (the mAP change within what
swapping neighbouring scores can make), or a change beyond float rounding, named where a divergence probe located
the first operation whose output differs between the two on one image (``metrics.divergence``).
"""

from __future__ import annotations

from yoloq.records import Record
from yoloq.report.reproduce import rounding_tolerance

EMULATED_NOTE = ("Each variant's own export scored again on an emulated Arm CPU (qemu-user; the runtime's aarch64 "
                 "wheel and its Arm kernels; yoloq's shared pre/postprocessing on the host). x86 - emulated: mAP50-95 "
                 "difference with its paired 95% interval over the same images (* = significant); agreement: the "
                 "emulated detections scored against the x86 ones (score >= 0.25); emulated % of ref: the emulated "
                 "mAP50-95 against the reference's on the same images. No latency: emulation is no "
                 "measure of the device's speed.")


def _num(x: float | None, nd: int = 4) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def verdict(twin: Record, host: Record) -> str:
    """One line: what the emulated score's difference from the x86 one is, and what explains it."""
    if not twin.ok:
        return f"{twin.status}: {twin.reason}"
    if not host.ok:
        return f"x86 {host.status}: {host.reason}"
    c = twin.metrics.get("vs_host") or {}
    if c.get("identical"):
        return "identical: the same detections on every image"
    div = twin.metrics.get("divergence") or {}
    where = f"; first differs at {div['summary']}" if div.get("summary") else \
        f"; not located: {div['why']}" if div.get("why") else ""
    drop = c.get("host_map", host.map or 0.0) - (twin.map or 0.0)
    tol = rounding_tolerance(twin)
    if abs(drop) <= tol:
        return f"float rounding only (mAP within {tol:.5f}){where}"
    sig = " (significant)" if c.get("significant") else " (within the interval's noise)"
    return f"beyond float rounding{sig}{where}"


def emulated_table(records: list[Record]) -> list[dict[str, str]]:
    """One row per emulated twin: the x86 and emulated mAP, x86 - emulated with its paired interval, agreement."""
    by_name = {r.name: r for r in records}
    out = []
    for r in records:
        host = by_name.get(r.pair.get("host", "")) if r.pair.get("role") == "emulated" else None
        if host is None:
            continue
        c = r.metrics.get("vs_host") or {}
        ci = f"{c['drop']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]" + ("*" if c.get("significant") else "") \
            if "drop" in c else ""
        n = r.dataset.get("images") if r.ok else None
        out.append({"variant": host.name, "emulated CPU": f"{r.pair.get('arch', '')} {r.pair.get('cpu', '')}",
                    "images": "" if n is None else f"{n}" + (f" of {host.dataset.get('images')}"
                                                            if n != host.dataset.get("images") else ""),
                    "x86 mAP50-95": _num(c.get("host_map", host.map) if host.ok else None),
                    "emulated mAP50-95": _num(r.map if r.ok else None),
                    "emulated % of ref": f"{100 * r.map / c['reference_map']:.1f}%"
                    if r.ok and r.map is not None and c.get("reference_map") else "",
                    "x86 - emulated [95% CI]": ci,
                    "agreement": _num(c.get("agreement"), 3), "verdict": verdict(r, host)})
    return out


DEVICE_NOTE = ("Each device's own figures, from the bundle's timing.py there (the same harness rules: warm-up, >= 100 "
               "runs and 10 s, decoding the image excluded), added with yoloq report --device-timings; this "
               "machine's p50 beside them for reference, never mixed with them. An emulated CPU's times are not the "
               "device's speed.")


def device_table(records: list[Record]) -> list[dict[str, str]]:
    """One row per (variant, device) timing: the device's p50/p90/p99 beside this machine's p50."""
    out = []
    for r in records:
        for name, t in (r.device_latency or {}).items():
            dev = t.get("device") or {}
            load = (t.get("outside_load") or {}).get("others_share")
            out.append({"variant": r.name, "device": name, "arch": str(dev.get("arch") or ""),
                        "emulated": "yes: not its speed" if dev.get("emulated") else "no",
                        "p50 ms": _num(t.get("p50_ms"), 1), "p90 ms": _num(t.get("p90_ms"), 1),
                        "p99 ms": _num(t.get("p99_ms"), 1), "runs": str(t.get("runs", "")),
                        "others' load": "" if load is None else f"{100 * load:.0f}%",
                        "this machine p50 ms": _num(r.p50, 1)})
    return out
