"""ncnn's own INT8 tools, ``ncnn2table`` (the calibration table) and ``ncnn2int8`` (int8 weights).

No wheel carries them: ``yoloq setup ncnn`` builds the two from ncnn's source, at the tag of the installed ``ncnn``
wheel (downloaded from GitHub, or a checkout named by ``$YOLOQ_NCNN_SOURCE``), with cmake and a C++ compiler, into
``$YOLOQ_CACHE/tools/ncnn-<version>/`` (about a minute: only the CPU library and the two tools).
``$YOLOQ_NCNN_TOOLS`` names a folder that already has both (a user's own ncnn build) instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from yoloq.errors import BackendUnavailable
from yoloq.paths import cache_root

TOOLS = ("ncnn2table", "ncnn2int8")
ENV_TOOLS = "YOLOQ_NCNN_TOOLS"
ENV_SOURCE = "YOLOQ_NCNN_SOURCE"
SETUP = "yoloq setup ncnn"
BUILD_TIMEOUT_S = 1800
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DNCNN_VULKAN=OFF", "-DNCNN_BUILD_TOOLS=ON", "-DNCNN_BUILD_EXAMPLES=OFF",
               "-DNCNN_BUILD_BENCHMARK=OFF", "-DNCNN_BUILD_TESTS=OFF", "-DNCNN_PYTHON=OFF", "-DNCNN_SIMPLEOCV=ON",
               "-DNCNN_RUNTIME_CPU=OFF", "-DNCNN_OPENMP=ON")


def ncnn_version() -> str:
    """The installed ncnn wheel's version (e.g. ``1.0.20261020``).

    Raises:
        BackendUnavailable: When ncnn is not installed.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ncnn")
    except PackageNotFoundError:
        raise BackendUnavailable("ncnn is not installed (pip install ncnn pnnx)") from None


def tools_dir() -> Path:
    """Where ``yoloq setup ncnn`` builds the tools: named by the ncnn version they are built from."""
    return cache_root() / "tools" / f"ncnn-{ncnn_version()}"


def _ready(folder: Path) -> bool:
    return all((folder / t).is_file() and os.access(folder / t, os.X_OK) for t in TOOLS)


def find() -> Path:
    """The folder that holds both tools.

    Raises:
        BackendUnavailable: When they are not built yet (one line naming ``yoloq setup ncnn``).
    """
    given = os.environ.get(ENV_TOOLS)
    if given:
        if not _ready(Path(given)):
            raise BackendUnavailable(f"${ENV_TOOLS}={given} does not hold {' and '.join(TOOLS)}; point it at an ncnn "
                                     f"build's tools/quantize folder, or unset it and run '{SETUP}'")
        return Path(given)
    folder = tools_dir()
    if not _ready(folder):
        raise BackendUnavailable(f"ncnn's INT8 tools ({', '.join(TOOLS)}) are in no wheel and not built here: run "
                                 f"'{SETUP}' (builds them from ncnn's source with cmake and a C++ compiler, about a "
                                 f"minute; the source from GitHub or ${ENV_SOURCE})")
    return folder


def source_note() -> str:
    """What the tools were built from (written by setup), for records."""
    note = tools_dir() / "SOURCE"
    return note.read_text().strip() if note.is_file() else os.environ.get(ENV_TOOLS, "?")


def _download(tag: str, dest: Path) -> Path:
    url = f"https://github.com/Tencent/ncnn/archive/refs/tags/{tag}.tar.gz"
    archive = dest / "ncnn.tar.gz"
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(archive, "wb") as f:  # noqa: S310 - a fixed https URL
            shutil.copyfileobj(r, f)
    except OSError as e:
        raise BackendUnavailable(f"ncnn's source could not be downloaded from {url} ({e}); give a checkout of "
                                 f"Tencent/ncnn in ${ENV_SOURCE} and run '{SETUP}' again") from None
    with tarfile.open(archive) as t:
        t.extractall(dest, filter="data")
    return next(p for p in dest.iterdir() if p.is_dir())


def setup(log: Any = None) -> Path:
    """Build (or reuse) ``ncnn2table`` and ``ncnn2int8`` for the installed ncnn; returns their folder.

    Raises:
        BackendUnavailable: When cmake or a compiler is missing, the source cannot be had, or the build fails.
    """
    import fcntl

    out = log or sys.stderr
    folder = tools_dir()
    if _ready(folder):
        return folder
    for exe, fix in (("cmake", "pip install cmake, or apt-get install cmake"), ("c++", "apt-get install g++")):
        if shutil.which(exe) is None:
            raise BackendUnavailable(f"building ncnn's INT8 tools needs {exe}: {fix}; then run '{SETUP}' again")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second setup waits for the first, then finds the tools
        if _ready(folder):
            return folder
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".build-") as tmp:
            given = os.environ.get(ENV_SOURCE)
            tag = ncnn_version().split(".")[-1]
            src = Path(given) if given else _download(tag, Path(tmp))
            if not (src / "tools" / "quantize" / "ncnn2table.cpp").is_file():
                raise BackendUnavailable(f"{src} is not ncnn's source (no tools/quantize/ncnn2table.cpp); give a "
                                         f"checkout of Tencent/ncnn in ${ENV_SOURCE}")
            build = Path(tmp) / "build"
            gen = ["-G", "Ninja"] if shutil.which("ninja") else []
            jobs = str(max(1, os.cpu_count() or 1))
            for cmd in (["cmake", *gen, "-S", str(src), "-B", str(build), *CMAKE_FLAGS],
                        ["cmake", "--build", str(build), "--target", *TOOLS, "-j", jobs]):
                try:
                    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          timeout=BUILD_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    raise BackendUnavailable(f"building ncnn's INT8 tools took over {BUILD_TIMEOUT_S} s") from None
                if proc.returncode != 0:
                    tail = proc.stdout.strip().splitlines()[-3:] or ["?"]
                    raise BackendUnavailable(f"building ncnn's INT8 tools failed ({' '.join(cmd[:2])}): "
                                             f"{' | '.join(tail)[:400]}")
                print(f"  {' '.join(cmd[:3])} ... ok", file=out)
            staging = folder.with_name(folder.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            for t in TOOLS:
                shutil.copy2(build / "tools" / "quantize" / t, staging / t)
            (staging / "SOURCE").write_text(f"ncnn source: {given or f'github.com/Tencent/ncnn tag {tag}'}\n")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
    return folder
