"""A toolkit's own Python environment, for a toolkit whose pins clash with yoloq's (RKNN, Sony's IMX500 tools).

``yoloq setup FORMAT`` creates a virtual environment under ``$YOLOQ_CACHE/envs/`` from the pinned requirements file
beside the backend (its hash names the folder, so a changed pin makes a new one); an environment variable may name an
existing interpreter that has the toolkit instead. Nothing of the toolkit is imported into yoloq's process.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yoloq.errors import BackendUnavailable
from yoloq.paths import cache_root

SETUP_TIMEOUT_S = 1800  # one step of a setup (an install downloads a few GB)


def end_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a worker that reads requests from its stdin: closing its input ends it; killed if it does not."""
    if proc.poll() is None:
        proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass(frozen=True)
class SideEnv:
    """One toolkit's environment: ``name`` (its folder's prefix and ``yoloq setup NAME``), the pinned
    ``requirements``, the ``probe`` import that shows it works, the variable naming an interpreter instead, and what
    the missing-environment message says about it (``about``: size, what it pins)."""

    name: str
    requirements: Path
    probe: str
    env_python: str
    about: str

    @property
    def setup_command(self) -> str:
        return f"yoloq setup {self.name}"

    def pins_digest(self) -> str:
        """The hash of the pinned requirements: it names the environment and enters variant keys."""
        return hashlib.sha256(self.requirements.read_bytes()).hexdigest()[:10]

    def env_dir(self) -> Path:
        """The environment's folder: named by the hash of the pinned requirements."""
        return cache_root() / "envs" / f"{self.name}-{self.pins_digest()}"

    def _marker(self) -> Path:
        return self.env_dir() / ".yoloq-ready"

    def is_ready(self) -> bool:
        """Whether the environment is set up (complete: its marker is written last)."""
        return self._marker().is_file()

    def python(self) -> Path:
        """The interpreter that has the toolkit.

        Raises:
            BackendUnavailable: When there is none yet (one line naming ``yoloq setup NAME``).
        """
        given = os.environ.get(self.env_python)
        if given:
            if not Path(given).is_file():
                raise BackendUnavailable(f"${self.env_python}={given} is not a file; point it at a python that has "
                                         f"the toolkit, or unset it and run '{self.setup_command}'")
            return Path(given)
        folder = self.env_dir()
        if not self._marker().is_file() or not (folder / "bin" / "python").exists():
            raise BackendUnavailable(f"{self.name}'s toolkit lives in its own environment, not set up here: run "
                                     f"'{self.setup_command}' ({self.about}, under {folder.parent}) or set "
                                     f"${self.env_python}")
        return folder / "bin" / "python"

    def setup(self, log: Any = None) -> Path:
        """Create (or reuse) the environment from the pinned requirements; returns its interpreter.

        Raises:
            BackendUnavailable: When the environment cannot be created or the toolkit does not import there.
        """
        import fcntl

        folder = self.env_dir()
        py = folder / "bin" / "python"
        if self.is_ready():
            return py
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f".{folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second setup waits for the first, then finds it ready
            if not self.is_ready():
                self._install(folder, py, log or sys.stderr)
        return py

    def _install(self, folder: Path, py: Path, out: Any) -> None:
        steps = [[sys.executable, "-m", "venv", "--clear", str(folder)],
                 [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
                  "-r", str(self.requirements)],
                 [str(py), "-c", self.probe]]
        for cmd in steps:
            try:
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      timeout=SETUP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise BackendUnavailable(f"the {self.name} environment could not be set up: {' '.join(cmd[-2:])} "
                                         f"took over {SETUP_TIMEOUT_S} s (a slow or unreachable package index?)"
                                         ) from None
            if proc.returncode != 0:
                tail = [x for x in proc.stdout.strip().splitlines() if "WARNING: Location" not in x][-1:] or ["?"]
                raise BackendUnavailable(f"the {self.name} environment could not be set up ({' '.join(cmd[-2:])} "
                                         f"failed: {tail[0][:300]}); see '{self.setup_command}' in the docs")
            print(f"  {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd[:4]))} ... ok", file=out)
        self._marker().write_text(self.requirements.read_text())
