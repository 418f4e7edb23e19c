"""One result record per variant, kept as JSON lines; every write replaces the file atomically."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("ok", "skipped", "failed")
REQUIRED = ("name", "format", "precision", "status")


@dataclass
class Record:
    """What one variant produced, and everything needed to trace it."""

    name: str
    format: str
    precision: str
    device: str
    status: str
    reason: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    imgsz: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
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
    created: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"record status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as written to ``records.jsonl``."""
        return asdict(self)


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


def load_records(path: Path) -> list[dict[str, Any]]:
    """Read ``records.jsonl`` (an absent file is an empty list; a torn last line is ignored)."""
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or any(k not in row for k in REQUIRED):
            print(f"yoloq: warning: {path.name} line {n} is not a yoloq record (needs {', '.join(REQUIRED)}); "
                  f"ignored", file=sys.stderr)
            continue
        out.append(row)
    return out


def save_record(path: Path, record: Record) -> None:
    """Put ``record`` in ``path``, replacing an earlier record of the same variant name."""
    rows = [r for r in load_records(path) if r.get("name") != record.name]
    rows.append(record.to_dict())
    write_atomic(path, "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows))
