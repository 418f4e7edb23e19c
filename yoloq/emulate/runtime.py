"""A runtime whose model runs on an emulated Arm CPU: the deploy bundle's loader in aarch64 Python under qemu-user.

Only the model runs emulated: each worker process loads the artifact with the loader a deploy bundle's
``predict.py`` carries for its format (the runtime's own aarch64 wheel, its Arm kernels) and answers NCHW inputs
with raw head outputs over a pipe. Letterbox, decoding, NMS and scoring stay yoloq's one shared pre/postprocessing
on the host, so the difference from the x86 record is the runtime's arithmetic on the other instruction set and
nothing else. One worker per core, each single-threaded, serves images in parallel (``in_flight``).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.backends.deploy import loader
from yoloq.backends.sideenv import end_process
from yoloq.config import EmulateConfig
from yoloq.emulate.userland import Userland, pins
from yoloq.errors import BackendUnavailable

START_TIMEOUT_S = 900  # an emulated runtime's import and model compile (OpenVINO's is the slowest)

_SERVER = '''
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

HERE = Path(sys.argv[1])  # the folder with meta.json, as in a bundle


{loader}


def main():
    proto = os.fdopen(os.dup(1), "wb")  # the answers; anything the runtime prints goes to stderr
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    model = load_model(Path(sys.argv[2]), int(sys.argv[3]))
    versions = {{}}
    for name in sys.argv[4:]:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    hello = json.dumps({{"machine": platform.machine(), "versions": versions}}).encode()
    proto.write(hello + b"\\n")
    proto.flush()
    while True:
        head = inp.readline()
        if not head:
            return
        meta = json.loads(head)
        x = np.frombuffer(inp.read(meta["bytes"]), dtype=meta["dtype"]).reshape(meta["shape"])
        y = np.ascontiguousarray(model(x))
        proto.write(json.dumps({{"shape": list(y.shape), "dtype": y.dtype.str, "bytes": y.nbytes}}).encode() + b"\\n")
        proto.write(y.tobytes())
        proto.flush()


main()
'''


def unsupported(fmt: str) -> str | None:
    """Why format ``fmt`` cannot run emulated (one line), or None when it can."""
    found = loader(fmt)
    if found is None:
        return f"{fmt} has no standalone runtime to run on aarch64 (it has no deploy bundle loader)"
    need = [p for p in found[1].split() if p]
    missing = [p for p in need if p.lower() not in pins()]
    if missing:
        return (f"{fmt}'s runtime ({', '.join(missing)}) is not in the aarch64 userland (yoloq/emulate/"
                f"requirements-aarch64.txt pins the runtimes that run emulated)")
    return None


class _Worker:
    """One emulated process: a request is a JSON header line and the array's bytes; so is the answer."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log = open(log, "ab")  # noqa: SIM115 - the worker's stderr for its lifetime, closed by close()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, stderr=self._log)
        self.hello = json.loads(self._line())

    def _line(self) -> bytes:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"the emulated process ended (exit {self.proc.returncode}): {self._last_error()}")
        return line

    def _last_error(self) -> str:
        try:
            lines = [x for x in self.log.read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            lines = []
        return lines[-1][:300] if lines else "no message (see the log)"

    def call(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        head = {"shape": list(x.shape), "dtype": x.dtype.str, "bytes": x.nbytes}
        try:
            self.proc.stdin.write(json.dumps(head).encode() + b"\n")
            self.proc.stdin.write(x.tobytes())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"the emulated process ended: {self._last_error()}") from None
        meta = json.loads(self._line())
        data = self.proc.stdout.read(meta["bytes"])
        return np.frombuffer(data, dtype=meta["dtype"]).reshape(meta["shape"]).copy()

    def close(self) -> None:
        end_process(self.proc)
        self._log.close()


class EmulatedRuntime:
    """The artifact served by ``workers`` emulated processes (``predict`` is thread-safe: one request each).

    Raises:
        BackendUnavailable: When the format cannot run emulated or the userland is not set up.
    """

    def __init__(self, fmt: str, artifact: Path, precision: str, em: EmulateConfig, workdir: Path) -> None:
        reason = unsupported(fmt)
        if reason:
            raise BackendUnavailable(reason)
        land = Userland()
        land.check()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "meta.json").write_text(json.dumps({"precision": precision}))
        (workdir / "server.py").write_text(_SERVER.format(loader=loader(fmt)[0].strip()))
        n = em.workers or os.cpu_count() or 1
        packages = sorted(pins())
        cmd = land.command(em.cpu, [str(workdir / "server.py"), str(workdir), str(Path(artifact).resolve()), "1",
                                    *packages])
        self.workers: list[_Worker] = []
        self._free: queue.Queue[_Worker] = queue.Queue()
        try:
            for i in range(n):
                w = _Worker(cmd, land.env(), workdir / f"worker{i}.log")
                self.workers.append(w)
                self._free.put(w)
        except Exception:
            self.close()
            raise
        hello = self.workers[0].hello
        self.in_flight = n
        self.info: dict[str, Any] = {
            "precision_ran": f"{precision} ({em.arch} {em.cpu}, emulated)",
            "emulated": {"arch": em.arch, "cpu": em.cpu, "machine": hello.get("machine"), "workers": n,
                         "threads": 1, "qemu": qemu_version(), "userland": land.folder.name,
                         "runtime_versions": {k: v for k, v in hello.get("versions", {}).items() if v}}}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on one batch in a free emulated process."""
        w = self._free.get()
        try:
            return w.call(batch)
        finally:
            self._free.put(w)

    def close(self) -> None:
        """End the emulated processes."""
        for w in self.workers:
            w.close()
        self.workers = []

    def __enter__(self) -> EmulatedRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def qemu_version() -> str:
    """qemu-user's version (``qemu-aarch64 --version``'s first line, its number)."""
    try:
        out = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    words = out.split()
    return words[2] if len(words) > 2 else out.strip()[:40]
