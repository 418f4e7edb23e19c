"""The RKNN toolkit's own Python environment, and the worker process that talks to it.

rknn-toolkit2 pins numpy<=1.26.4, protobuf<=4.25.4, onnx<=1.18 and torch<=2.4: it cannot share yoloq's
environment. ``yoloq setup rknn`` creates a virtual environment (:class:`yoloq.backends.sideenv.SideEnv`) from the
pinned ``requirements.txt`` beside this module; ``$YOLOQ_RKNN_PYTHON`` names an existing interpreter that has the
toolkit instead. Nothing of the toolkit is imported here: :class:`Worker` runs ``worker.py`` with that interpreter
and exchanges one JSON line per request (typed by :class:`Build` and :class:`Infer`).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yoloq.backends.sideenv import SideEnv, end_process
from yoloq.backends.watched import peak_rss_of
from yoloq.errors import ExportError

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
ENV_PYTHON = "YOLOQ_RKNN_PYTHON"
SETUP = "yoloq setup rknn"
ENV = SideEnv("rknn", REQUIREMENTS, "from rknn.api import RKNN", ENV_PYTHON,
              "about 6 GB; rknn-toolkit2 2.5.0 pins torch 2.4 and numpy 1.26")
pins_digest, env_dir, is_ready, python, setup = ENV.pins_digest, ENV.env_dir, ENV.is_ready, ENV.python, ENV.setup


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

    def peak_mb(self) -> float | None:
        """The worker's peak resident memory so far (MB): what the toolkit's build took at most."""
        return None if self.proc.poll() is not None else peak_rss_of(self.proc.pid)

    def close(self) -> None:
        """Stop the worker (closing its input ends it) and close the log."""
        end_process(self.proc)
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
