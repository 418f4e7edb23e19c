"""Where yoloq finds shared models and datasets (``$YOLOQ_SHARED``, else ``../shared``) and its cache."""

from __future__ import annotations

import os
from pathlib import Path

ENV_SHARED = "YOLOQ_SHARED"
ENV_CACHE = "YOLOQ_CACHE"
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """Return the shared data folder.

    ``$YOLOQ_SHARED`` when set; otherwise the first existing ``../shared`` beside the current
    directory or beside the yoloq checkout (falls back to the former when neither exists).
    """
    env = os.environ.get(ENV_SHARED)
    if env:
        return Path(env).expanduser().resolve()
    candidates = [Path.cwd() / ".." / "shared", REPO_ROOT / ".." / "shared"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[0].resolve()


def cache_root() -> Path:
    """Where yoloq keeps what it builds and never commits (fine-tuned weights, derived datasets):
    ``$YOLOQ_CACHE``, else ``~/.cache/yoloq``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "yoloq"


def display_path(path: Path) -> str:
    """Render a path for records and reports without leaking this machine's absolute layout.

    Paths under the shared folder become ``$YOLOQ_SHARED/...``; paths under the checkout or the
    current directory become relative; anything else is shown as given.
    """
    path = Path(path).resolve()
    for base, label in ((shared_root(), "$YOLOQ_SHARED"), (cache_root(), "$YOLOQ_CACHE"), (REPO_ROOT, "."),
                        (Path.cwd().resolve(), ".")):
        try:
            rel = path.relative_to(base)
        except ValueError:
            continue
        return f"{label}/{rel.as_posix()}" if label != "." else rel.as_posix()
    return str(path)


def from_display(text: str, base: Path) -> Path:
    """Turn a recorded path (see :func:`display_path`) back into a path on this machine.

    ``$YOLOQ_SHARED/...`` resolves against the shared folder; a relative path against ``base``
    (the run folder for artifacts), then the checkout.
    """
    if text.startswith("$YOLOQ_SHARED/"):
        return shared_root() / text[len("$YOLOQ_SHARED/"):]
    if text.startswith("$YOLOQ_CACHE/"):
        return cache_root() / text[len("$YOLOQ_CACHE/"):]
    p = Path(text)
    if p.is_absolute():
        return p
    return base / p if (base / p).exists() else REPO_ROOT / p
