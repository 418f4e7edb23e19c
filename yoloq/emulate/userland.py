"""An Arm (aarch64) userland on this x86 machine: Debian's arm64 Python under qemu-user, with the runtimes' own
aarch64 wheels, so a model is scored by the kernels it runs on a Raspberry Pi or a phone SoC.

``yoloq setup aarch64`` unpacks Debian's arm64 ``python3`` (``debootstrap --foreign``: downloaded and unpacked, no
chroot, no binfmt), installs the wheels pinned in ``requirements-aarch64.txt`` for ``manylinux_*_aarch64`` with x86
pip (``--target``), and writes an Arm ``/proc/cpuinfo`` for each CPU model: ONNX Runtime's CPU probe reads that file
and crashes on the host's x86 one, so each emulated process sees the Arm one in a private mount namespace
(``unshare -m``). The folder is named by the hash of the pins, under ``$YOLOQ_CACHE``, like a toolkit's side
environment.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yoloq.errors import BackendUnavailable
from yoloq.paths import cache_root

REQUIREMENTS = Path(__file__).with_name("requirements-aarch64.txt")
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"  # Debian 12: Python 3.11, as yoloq's own
PYTHON = "usr/bin/python3.11"
STEP_TIMEOUT_S = 1800
# manylinux tags a bookworm userland (glibc 2.36) runs: pip --platform takes exact tags
PLATFORMS = ["manylinux2014_aarch64"] + [f"manylinux_2_{v}_aarch64" for v in range(17, 37)]


@dataclass(frozen=True)
class ArmCpu:
    """A CPU model qemu emulates (``-cpu``), the boards that have it, and what its ``/proc/cpuinfo`` says."""

    name: str
    boards: str
    part: str  # MIDR part number
    variant: str
    features: str


_V8 = "fp asimd evtstrm crc32 cpuid"
_V82 = f"{_V8} aes pmull sha1 sha2 atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"
CPUS = {c.name: c for c in (
    ArmCpu("cortex-a76", "Raspberry Pi 5, Rockchip RK3588 (big cores)", "0xd0b", "0x4", _V82),
    ArmCpu("cortex-a72", "Raspberry Pi 4", "0xd08", "0x0", _V8),
    ArmCpu("cortex-a55", "Rockchip RK3566/RK3568, RK3588 (little cores)", "0xd05", "0x2", _V82),
)}
DEFAULT_CPU = "cortex-a76"


def cpuinfo_text(cpu: ArmCpu, cores: int) -> str:
    """``/proc/cpuinfo`` as an Arm Linux kernel writes it for ``cores`` cores of ``cpu``."""
    block = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {f}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
             "CPU variant\t: {v}\nCPU part\t: {p}\nCPU revision\t: 1\n")
    return "\n".join(block.format(i=i, f=cpu.features, v=cpu.variant, p=cpu.part) for i in range(cores)) + "\n"


def pins() -> dict[str, str]:
    """The pinned aarch64 packages, ``name -> version``."""
    out = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[name.strip().lower()] = version.strip()
    return out


@dataclass(frozen=True)
class Userland:
    """The aarch64 userland under ``$YOLOQ_CACHE/aarch64-<hash of the pins>``."""

    @property
    def folder(self) -> Path:
        digest = hashlib.sha256(REQUIREMENTS.read_bytes() + SUITE.encode()).hexdigest()[:10]
        return cache_root() / f"aarch64-{digest}"

    @property
    def root(self) -> Path:
        return self.folder / "root"

    @property
    def site(self) -> Path:
        return self.folder / "site"

    def is_ready(self) -> bool:
        """Whether the userland is complete (its marker is written last)."""
        return (self.folder / ".yoloq-ready").is_file()

    def missing_tools(self) -> list[str]:
        """Host programs the userland needs and this machine lacks (Debian package names)."""
        need = {"qemu-aarch64": "qemu-user", "unshare": "util-linux"}
        if not self.is_ready():
            need |= {"debootstrap": "debootstrap", "dpkg-deb": "dpkg"}
        return sorted({pkg for tool, pkg in need.items() if shutil.which(tool) is None})

    def check(self) -> None:
        """Raise one line when emulated runs cannot start here.

        Raises:
            BackendUnavailable: No qemu-user, no userland yet, or no way to make a private mount namespace.
        """
        missing = self.missing_tools()
        if missing:
            raise BackendUnavailable(f"aarch64 emulation needs {', '.join(missing)} (Debian: apt-get install "
                                     f"{' '.join(missing)})")
        if not self.is_ready():
            raise BackendUnavailable(f"no aarch64 userland here: run 'yoloq setup aarch64' (Debian's arm64 Python "
                                     f"and the runtimes' aarch64 wheels, about 600 MB, under {self.folder.parent})")

    def command(self, cpu: str, argv: list[str]) -> list[str]:
        """The host command that runs ``python3.11 argv...`` on emulated ``cpu`` with its own ``/proc/cpuinfo``."""
        import shlex

        info = self.folder / f"cpuinfo-{cpu}"
        qemu = shlex.join(["qemu-aarch64", "-cpu", cpu, str(self.root / PYTHON), *argv])
        # as root, a private mount namespace; otherwise a user namespace maps this user to root inside it
        flags = "-m" if os.geteuid() == 0 else "-rm"
        return ["unshare", flags, "sh", "-c", f"mount --bind {shlex.quote(str(info))} /proc/cpuinfo && exec {qemu}"]

    def env(self) -> dict[str, str]:
        """The environment of an emulated process: qemu's library prefix and the wheels' folder."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "QEMU_", "VIRTUAL_ENV"))}
        return env | {"QEMU_LD_PREFIX": str(self.root), "PYTHONPATH": str(self.site), "PYTHONNOUSERSITE": "1",
                      "OMP_NUM_THREADS": "1"}

    def setup(self, log: Any = None) -> Path:
        """Create (or reuse) the userland; returns its folder.

        Raises:
            BackendUnavailable: When a host tool is missing or a step fails (one line naming it).
        """
        out = log or sys.stderr
        if self.is_ready():
            return self.folder
        missing = self.missing_tools()
        if missing:
            raise BackendUnavailable(f"'yoloq setup aarch64' needs {', '.join(missing)} (Debian: apt-get install "
                                     f"{' '.join(missing)})")
        try:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BackendUnavailable(f"'yoloq setup aarch64': {self.folder.parent} cannot be created ({e.strerror}); "
                                     f"set YOLOQ_CACHE to a folder you can write") from None
        with open(self.folder.parent / f".{self.folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second setup waits for the first, then finds it ready
            if not self.is_ready():
                self._install(out)
        return self.folder

    def _run(self, cmd: list[str], what: str, out: Any, env: dict[str, str] | None = None) -> None:
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=STEP_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            raise BackendUnavailable(f"'yoloq setup aarch64': {what} took over {STEP_TIMEOUT_S} s (a slow or "
                                     "unreachable package mirror?)") from None
        if proc.returncode != 0:
            tail = [x for x in proc.stdout.strip().splitlines() if "WARNING: Location" not in x][-1:] or ["?"]
            raise BackendUnavailable(f"'yoloq setup aarch64': {what} failed: {tail[0][:300]}")
        print(f"  {what} ... ok", file=out)

    def _install(self, out: Any) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.root.mkdir(parents=True)
        mirror = os.environ.get("YOLOQ_DEBIAN_MIRROR", MIRROR)
        self._run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3", SUITE,
                   str(self.root), mirror], f"debootstrap {SUITE} arm64 from {mirror}", out)
        # --foreign unpacks the base system only; python3 and its libraries are downloaded beside it: unpack them
        for deb in sorted((self.root / "var/cache/apt/archives").glob("*.deb")):
            self._run(["dpkg-deb", "-x", str(deb), str(self.root)], f"unpack {deb.name}", open(os.devnull, "w"))
        plat = [a for p in PLATFORMS for a in ("--platform", p)]
        self._run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
                   "--target", str(self.site), *plat, "--python-version", "3.11", "--implementation", "cp",
                   "--only-binary=:all:", "-r", str(REQUIREMENTS)], "pip install the aarch64 wheels", out)
        for cpu in CPUS.values():
            (self.folder / f"cpuinfo-{cpu.name}").write_text(cpuinfo_text(cpu, os.cpu_count() or 2))
        probe = "import numpy, cv2, platform; assert platform.machine() == 'aarch64'; print(numpy.__version__)"
        self._run(self.command(DEFAULT_CPU, ["-c", probe]), "python3.11 on an emulated cortex-a76", out, self.env())
        (self.folder / ".yoloq-ready").write_text(REQUIREMENTS.read_text())
