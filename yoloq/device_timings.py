"""Timings a device made with a bundle's ``timing.py``, added to the run's records as that device's figures.

Each file names its variant, the variant key its bundle was exported under, the sha256 of the model file it timed and
the device; it goes into the variant's record under ``device_latency[<device>]``, beside (never in place of) the
latency this machine measured. A file from a bundle exported under other settings (another key) is refused in one
line; whether the model file is byte for byte the run's own export is recorded (``same_bytes``: an export made
again can differ in metadata only, such as the exporter's date).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from yoloq.errors import YoloqError
from yoloq.paths import from_display
from yoloq.records import RecordStore

KEEP = ("variant", "key", "precision", "model_sha256", "device", "runtime", "threads", "batch", "imgsz", "conf",
        "warmup", "runs", "seconds", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "fps", "stages", "outside_load",
        "created")


def file_sha256(path: Path) -> str:
    """The sha256 ``timing.py`` computes: a file's bytes, or a folder's files' bytes in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        h.update(f.read_bytes())
    return h.hexdigest()


def _read(f: Path) -> dict[str, Any]:
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise YoloqError(f"--device-timings {f}: cannot be read as JSON ({e}); give the file a bundle's timing.py "
                         "wrote") from None
    if not isinstance(data, dict) or data.get("yoloq_timing") != 1 or \
            not {"variant", "p50_ms", "runs", "device"} <= set(data):
        raise YoloqError(f"--device-timings {f}: not a timing.py result (run 'python timing.py IMAGES --out FILE' "
                         "in the variant's bundle)")
    return data


def add_device_timings(store: RecordStore, files: list[Path]) -> list[str]:
    """Add each timing file to its variant's record (one atomic rewrite); one line per file said back.

    Raises:
        YoloqError: A file that is not a timing result, names no variant of the run, or timed another model file.
    """
    said = []
    for f in map(Path, files):
        data = _read(f)
        rec = store.get(data["variant"])
        if rec is None:
            names = ", ".join(r.name for r in store.all())
            raise YoloqError(f"--device-timings {f}: variant {data['variant']!r} is not in {store.run_dir} "
                             f"(variants: {names})")
        host = rec.pair.get("host") if rec.pair.get("role") == "emulated" else None
        if host:  # a twin is the same export: its timings belong to the variant itself
            rec = store.get(host) or rec
        if data.get("key") and data["key"] != rec.key:
            raise YoloqError(f"--device-timings {f}: its bundle was exported from other settings than {rec.name} in "
                             f"this run (variant key {data['key']} against {rec.key}); export the bundle from this "
                             "run's config again")
        art = from_display(rec.artifact, store.run_dir) if rec.artifact else None
        match = file_sha256(art) == data.get("model_sha256") if art is not None and art.exists() else None
        dev = data.get("device") or {}
        label = str(dev.get("name") or dev.get("arch") or "device")
        flag = " (emulated)" if dev.get("emulated") and "emulated" not in label.lower() else ""
        name = f"{label}{flag}, {data.get('threads')} threads"
        rec.device_latency[name] = {k: data.get(k) for k in KEEP} | {"file": f.name, "same_bytes": match}
        said.append(f"  {rec.name}: {name}: p50 {data['p50_ms']:.1f} ms over {data['runs']} runs"
                    + (" (emulated: not the device's speed)" if dev.get("emulated") else ""))
    store.save()
    return said
