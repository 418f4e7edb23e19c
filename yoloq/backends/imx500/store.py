"""IMX500 exports kept under ``$YOLOQ_CACHE/imx500-exports`` by their key (model, toolkit, calibration images,
settings): an export takes minutes to hours, so a run after a tune, or a rerun, copies the one made before."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from yoloq.paths import cache_root


def cached(key: str, out: Path) -> dict[str, Any] | None:
    """This very export (same model, toolkit, calibration images and settings) made by an earlier run or tune
    on this machine, copied to ``out`` (an export takes minutes to hours); else None."""
    kept = cache_root() / "imx500-exports" / key[:24]
    if not (kept / "reply.json").is_file() or not (kept / "model" / "packerOut.zip").is_file():
        return None
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(kept / "model", out)
    return json.loads((kept / "reply.json").read_text()) | {"reused_from_cache": True}


def keep(key: str, out: Path, reply: dict[str, Any]) -> None:
    """Keep the export under ``$YOLOQ_CACHE/imx500-exports`` by its key (written whole, then renamed)."""
    kept = cache_root() / "imx500-exports" / key[:24]
    if kept.is_dir():
        return
    partial = kept.with_name(kept.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(out, partial / "model")
    (partial / "reply.json").write_text(json.dumps({k: v for k, v in reply.items() if k != "reused_from_cache"}))
    os.replace(partial, kept)
