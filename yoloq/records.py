"""One result record per variant, kept as JSON lines by one writer: :class:`RecordStore`.

Every field any stage writes is a field of :class:`Record`; the store replaces the file atomically
on each change, so a reader (or a run killed at any moment) sees the old file or the new one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

STATUSES = ("ok", "skipped", "failed")
REQUIRED = ("name", "format", "precision", "status")


@dataclass
class Record:
    """What one variant produced, and everything needed to trace it."""

    name: str
    format: str
    precision: str
    device: str = "cpu"
    status: str = "ok"
    reason: str = ""
    order: int = 0  # the variant's place in its config (reports list variants in this order)
    reference: bool = False  # the variant every other is compared to
    pair: dict[str, Any] = field(default_factory=dict)  # e.g. {"role": "qat", "ptq": name}: compared with ptq
    model: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=dict)  # the head and the branch that ran (models.Head.describe)
    options: dict[str, Any] = field(default_factory=dict)
    imgsz: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    throughput: dict[str, Any] = field(default_factory=dict)  # frames per second with 1, 2, 4 ... streams in flight
    size_mb: float | None = None
    artifact: str | None = None
    artifact_info: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    eval_settings: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    key: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    speedup: dict[str, Any] = field(default_factory=dict)
    explain: dict[str, Any] = field(default_factory=dict)  # yoloq explain's summary: int8 shares, float layers
    execution: dict[str, Any] = field(default_factory=dict)  # where it ran: {"engine": "ray", "node": ...}
    # timings a device made with the bundle's timing.py, per device: that device's figures, never this machine's
    device_latency: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # fields of newer yoloq versions, kept as they were

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"record status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        """Whether the variant ran."""
        return self.status == "ok"

    @property
    def map(self) -> float | None:
        """mAP50-95, when evaluated."""
        return self.metrics.get("map50_95")

    @property
    def p50(self) -> float | None:
        """p50 end-to-end latency in ms, when timed."""
        return self.latency.get("p50_ms")

    @property
    def end2end(self) -> bool:
        """Whether the NMS-free one-to-one branch ran (its output is taken as it is, no NMS)."""
        return self.head.get("branch") == "one2one"

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as written to ``records.jsonl``."""
        d = asdict(self)
        return d | d.pop("extra")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        """A record from its JSON form (unknown keys kept in ``extra``)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in names},
                   extra={k: v for k, v in d.items() if k not in names})


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, damaged: list[int] | None = None) -> list[Record]:
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or any(k not in row for k in REQUIRED):
                raise ValueError
            out.append(Record.from_dict(row))
        except json.JSONDecodeError:
            if damaged is not None:
                damaged.append(n)
            continue  # a torn last line (older writers); atomic writes leave none
        except (ValueError, TypeError):
            if damaged is not None:
                damaged.append(n)
            print(f"yoloq: warning: {path.name} line {n} is not a yoloq record (needs {', '.join(REQUIRED)}); "
                  f"ignored", file=sys.stderr)
    return out


class RecordStore:
    """The records of one run folder: read once, changed in memory, written whole and atomically.

    The store is the only writer of ``records.jsonl``.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "records.jsonl"
        self.damaged: list[int] = []  # line numbers that are not records (kept out, reported)
        self._records: list[Record] = _read(self.path, self.damaged)

    def all(self) -> list[Record]:
        """Every record, in config order (file order among equals)."""
        return sorted(self._records, key=lambda r: r.order)

    def get(self, name: str) -> Record | None:
        """The record of variant ``name``."""
        return next((r for r in self._records if r.name == name), None)

    def put(self, record: Record) -> None:
        """Add ``record`` (replacing the one of the same name) and write the file."""
        self._records = [r for r in self._records if r.name != record.name] + [record]
        self.save()

    def remove(self, names: list[str]) -> None:
        """Drop the records of ``names`` and write the file."""
        self._records = [r for r in self._records if r.name not in names]
        self.save()

    def save(self) -> None:
        """Write every record (after in-place changes)."""
        write_atomic(self.path, "".join(json.dumps(r.to_dict()) + "\n" for r in self._records))


def reference_of(records: Iterable[Record]) -> Record | None:
    """The reference record (marked by the run), else the first ok FP32 record, else the first ok one."""
    ok = [r for r in records if r.ok]
    return next((r for r in ok if r.reference), None) or next((r for r in ok if r.precision == "fp32"),
                                                              ok[0] if ok else None)


def same_backend(records: Iterable[Record], r: Record, precision: str) -> Record | None:
    """The first ok ``precision`` record (config order) of ``r``'s format and device, not a derived (QAT) one."""
    return next((x for x in sorted(records, key=lambda x: x.order)
                 if x.ok and x.format == r.format and x.precision == precision and x.device == r.device
                 and not x.pair), None)


def same_place(a: Record, b: Record) -> bool:
    """Whether two records were timed on one node (a cluster run times each target on its own device):
    only then is a latency ratio between them a speed-up."""
    return a.execution.get("node") == b.execution.get("node")


def speedup(records: list[Record], r: Record) -> dict[str, Any]:
    """p50 speed-up of ``r`` against its backend's FP32 and FP16 (OpenVINO's FP16 runs BF16 on AMX CPUs),
    and whether each pair was timed in the same side-by-side pass; none across nodes."""
    out: dict[str, Any] = {}
    for prec in ("fp32", "fp16"):
        base = same_backend(records, r, prec)
        if base is not None and r.p50 and base.p50 and same_place(base, r):
            out[f"vs_{prec}"] = base.p50 / r.p50
            out[prec] = base.name
            out[f"{prec}_same_pass"] = (base.latency.get("group") is not None
                                        and base.latency.get("group") == r.latency.get("group"))
    return out
