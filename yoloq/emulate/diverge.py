"""Where x86 and the emulated Arm CPU first compute differently: a format's probe run by both on one image.

The probe (:mod:`yoloq.backends.probes`) reads the runtime's intermediate tensors in execution order; the same
script runs under yoloq's own Python and under the aarch64 one. An operation whose output differs while every
tensor it reads is the same is where the two instruction sets' kernels part (an *origin*); everything after it
inherits the change. The first origin and the origins by operation name the kernel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.backends.probes import NO_PROBE, probe_for
from yoloq.config import EmulateConfig
from yoloq.emulate.userland import Userland

PROBE_TIMEOUT_S = 1800

_MAIN = '''
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(sys.argv[1])


{probe}


rows = probe(Path(sys.argv[2]), np.load(sys.argv[3]))
np.savez(sys.argv[4], *[np.asarray(r[3]) for r in rows])
Path(sys.argv[4] + ".json").write_text(json.dumps([[r[0], r[1], list(r[2])] for r in rows]))
'''


def _load(path: Path) -> tuple[list[list[Any]], list[np.ndarray]]:
    rows = json.loads(Path(str(path) + ".json").read_text())
    z = np.load(path)
    return rows, [z[f"arr_{i}"] for i in range(len(rows))]


def compare(host: Path, emulated: Path) -> dict[str, Any]:
    """The tensors that differ between the two probe runs, the first one, and the origins by operation."""
    (rows, xs), (_, ys) = _load(host), _load(emulated)
    same: dict[str, bool] = {}
    first = None
    origins: Counter[str] = Counter()
    for (name, op, ins), a, b in zip(rows, xs, ys):
        eq = a.shape == b.shape and np.array_equal(a, b)
        same[name] = eq
        if eq:
            continue
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64)) if a.shape == b.shape else None
        info = {"tensor": name, "op": op, "values": int(a.size),
                "values_differ": int((diff > 0).sum()) if diff is not None else int(a.size),
                "max_abs_diff": float(diff.max()) if diff is not None else None}
        first = first or info
        if (ins or info is first) and all(same.get(i, True) for i in ins):  # never probed: the model's input
            origins[op] += 1
    n_diff = sum(1 for v in same.values() if not v)
    if first is None:
        summary = f"none of {len(rows)} probed tensors differs (the output included)"
    else:
        by_op = ", ".join(f"{op} x{k}" for op, k in origins.most_common(4))
        summary = (f"{first['op']} -> {first['tensor']} ({first['values_differ']} of {first['values']} values, "
                   f"max |diff| {first['max_abs_diff']:g}); {n_diff} of {len(rows)} probed tensors differ; where "
                   f"inputs agree and the output does not: {by_op}")
    return {"tensors": len(rows), "differ": n_diff, "first": first, "origins": dict(origins), "summary": summary}


def locate(fmt: str, artifact: Path, precision: str, em: EmulateConfig, x: np.ndarray, workdir: Path
           ) -> dict[str, Any]:
    """Run the format's probe on input ``x`` here and emulated; the comparison (or why there is none)."""
    found = probe_for(fmt)
    if found is None:
        return {"summary": None, "why": NO_PROBE.get(fmt, f"{fmt} has no divergence probe")}
    source, prepare = found
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "meta.json").write_text(json.dumps({"precision": precision}))
    path = prepare(Path(artifact), workdir)
    script = workdir / "probe.py"
    script.write_text(_MAIN.format(probe=source.strip()))
    np.save(workdir / "input.npy", np.ascontiguousarray(x, np.float32))
    args = [str(script), str(workdir), str(path), str(workdir / "input.npy")]
    land = Userland()
    for cmd, env in (([sys.executable, *args, str(workdir / "x86.npz")], None),
                     (land.command(em.cpu, [*args, str(workdir / "emulated.npz")]), land.env())):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=PROBE_TIMEOUT_S)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
            return {"summary": None, "why": f"the probe failed ({'emulated' if env else 'x86'}): {tail}"}
    return compare(workdir / "x86.npz", workdir / "emulated.npz")
