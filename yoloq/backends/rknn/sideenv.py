"""The RKNN toolkit's own Python environment, and the worker process that talks to it.

rknn-toolkit2 pins numpy<=1.26.4, protobuf<=4.25.4, onnx<=1.18 and torch<=2.4: it cannot share yoloq's
environment. ``yoloq setup rknn`` creates a virtual environment under ``$YOLOQ_CACHE/envs/`` from the pinned
``requirements.txt`` beside this module (its hash names the folder, so a changed pin makes a new one);
``$YOLOQ_RKNN_PYTHON`` names an existing interpreter that has the toolkit instead. Nothing of the toolkit is
imported here: :class:`Worker` runs ``worker.py`` with that interpreter and exchanges one JSON line per
request (typed by :class:`Build` and :class:`Infer`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yoloq.errors import BackendUnavailable, ExportError
from yoloq.paths import cache_root

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
ENV_PYTHON = "YOLOQ_RKNN_PYTHON"
SETUP = "yoloq setup rknn"
SETUP_TIMEOUT_S = 1800  # one step of the setup (the install downloads about 3 GB)


def pins_digest() -> str:
    """The hash of the pinned requirements: it names the environment and enters RKNN variant keys."""
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:10]


def env_dir() -> Path:
    """The side environment's folder: named by the hash of the pinned requirements."""
    return cache_root() / "envs" / f"rknn-{pins_digest()}"


def _ready_marker(folder: Path) -> Path:
    return folder / ".yoloq-ready"


def is_ready() -> bool:
    """Whether the side environment is set up (complete: its marker is written last)."""
    return _ready_marker(env_dir()).is_file()


def python() -> Path:
    """The interpreter that has the toolkit.

    Raises:
        BackendUnavailable: When there is none yet (one line naming ``yoloq setup rknn``).
    """
    given = os.environ.get(ENV_PYTHON)
    if given:
        if not Path(given).is_file():
            raise BackendUnavailable(f"${ENV_PYTHON}={given} is not a file; point it at a python that has "
                                     f"rknn-toolkit2, or unset it and run '{SETUP}'")
        return Path(given)
    folder = env_dir()
    if not _ready_marker(folder).is_file() or not (folder / "bin" / "python").exists():
        raise BackendUnavailable(f"RKNN's toolkit lives in its own environment, not set up here: run '{SETUP}' "
                                 f"(about 6 GB under {folder.parent}; rknn-toolkit2 2.5.0 pins torch 2.4 and "
                                 f"numpy 1.26) or set ${ENV_PYTHON}")
    return folder / "bin" / "python"


def setup(log: Any = None) -> Path:
    """Create (or reuse) the side environment from the pinned requirements; returns its interpreter.

    Raises:
        BackendUnavailable: When the environment cannot be created or the toolkit does not import there.
    """
    import fcntl

    folder = env_dir()
    py = folder / "bin" / "python"
    if _ready_marker(folder).is_file():
        return py
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second setup waits for the first, then finds it ready
        if not _ready_marker(folder).is_file():
            _install(folder, py, log or sys.stderr)
    return py


def _install(folder: Path, py: Path, out: Any) -> None:
    steps = [[sys.executable, "-m", "venv", "--clear", str(folder)],
             [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
              "-r", str(REQUIREMENTS)],
             [str(py), "-c", "from rknn.api import RKNN"]]
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=SETUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BackendUnavailable(f"the RKNN environment could not be set up: {' '.join(cmd[-2:])} took over "
                                     f"{SETUP_TIMEOUT_S} s (a slow or unreachable package index?)") from None
        if proc.returncode != 0:
            tail = [x for x in proc.stdout.strip().splitlines() if "WARNING: Location" not in x][-1:] or ["?"]
            raise BackendUnavailable(f"the RKNN environment could not be set up ({' '.join(cmd[-2:])} failed: "
                                     f"{tail[0][:300]}); see '{SETUP}' in docs/rknn.md")
        print(f"  {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd[:4]))} ... ok", file=out)
    _ready_marker(folder).write_text(REQUIREMENTS.read_text())


@dataclass(frozen=True)
class Build:
    """Build an RKNN model from a static ONNX (and keep it in the simulator when ``simulate``)."""

    onnx: str
    rknn: str
    config: dict[str, Any]
    quantize: bool
    dataset: str | None = None
    simulate: bool = False
    auto_hybrid: bool = False
    hybrid: list[list[str]] | None = None
    op: str = field(default="build", init=False)


@dataclass(frozen=True)
class Infer:
    """Run the simulated model on one NCHW uint8 ``.npy``; the outputs go to ``output`` (``.npz``)."""

    input: str
    output: str
    op: str = field(default="infer", init=False)


@dataclass(frozen=True)
class Analyze:
    """The toolkit's per-layer accuracy analysis of the simulated model on ``inputs`` into ``dir``."""

    inputs: list[str]
    dir: str
    op: str = field(default="analyze", init=False)


class Worker:
    """``worker.py`` in the side environment: one request at a time, the toolkit's output to ``log``."""

    def __init__(self, log: Path, interpreter: Path | None = None) -> None:
        py = interpreter or python()
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "a")  # noqa: SIM115 - open for the worker's life
        r, w = os.pipe()
        self.proc = subprocess.Popen([str(py), str(HERE / "worker.py"), str(w)], stdin=subprocess.PIPE,
                                     stdout=self._log, stderr=self._log, pass_fds=(w,), text=True,
                                     env={**os.environ, "PYTHONNOUSERSITE": "1", "PYTHONPATH": ""})
        os.close(w)
        self._replies = os.fdopen(r, "r")
        self.log = log

    def call(self, req: Any) -> dict[str, Any]:
        """Send one request (a dataclass or a dict) and return its reply.

        Raises:
            ExportError: When the worker reports a failure or has died (its log is named).
        """
        body = asdict(req) if hasattr(req, "__dataclass_fields__") else dict(req)
        if self.proc.poll() is not None:
            raise ExportError(f"the RKNN worker has exited ({self.proc.returncode}); see {self.log}")
        self.proc.stdin.write(json.dumps(body) + "\n")
        self.proc.stdin.flush()
        line = self._replies.readline()
        if not line:
            self.proc.wait()
            raise ExportError(f"the RKNN worker died during '{body['op']}' ({self.proc.returncode}); see {self.log}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ExportError(f"RKNN {body['op']}: {reply.get('error')} (toolkit log: {self.log})")
        return reply

    def close(self) -> None:
        """Stop the worker (closing its input ends it) and close the log."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._replies.close()
        self._log.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
