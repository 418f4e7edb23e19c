"""Where a number came from: the machine (and its fingerprint) and the library versions."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Mapping

PACKAGES = ("yoloq", "ultralytics", "torch", "onnx", "onnxslim", "onnxruntime", "openvino", "nncf", "ai-edge-litert",
            "litert-torch", "ai-edge-quantizer", "tensorrt", "pycocotools", "numpy", "opencv-python")

# CPU features that change which kernels a runtime picks (so its speed, and for BF16/AMX its arithmetic)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx_vnni",
             "asimd", "asimddp", "i8mm", "bf16", "sve")
# what must match for a record to be reused (and what `yoloq reproduce` compares)
FINGERPRINT = ("cpu", "arch", "isa", "cores", "gpu", "gpu_driver")


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Installed versions of the libraries that shape results (absent ones are left out)."""
    out = {}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            continue
    return out


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "Hardware") and val.strip() and model in ("", platform.machine()):
                    model = val.strip()
                elif key in ("flags", "Features"):
                    flags = set(val.split())
    except OSError:
        pass
    return model, flags


def _gpu() -> tuple[str | None, str | None]:
    """The first CUDA GPU's name and the NVIDIA driver version (None, None without one)."""
    name = None
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA install just means no GPU is recorded
        return None, None
    if name is None:
        return None, None
    driver = None
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
    except Exception:  # noqa: BLE001 - the driver version is informative only
        driver = None
    return name, driver


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def worker_threads(most: int = 4) -> int:
    """Threads for numpy work that releases the GIL: one per usable core, at most ``most``."""
    return min(most, usable_cores())


@lru_cache(maxsize=1)
def machine() -> dict[str, Any]:
    """CPU model, cores, the instruction sets kernels depend on, GPU and driver, OS and Python."""
    model, flags = _cpuinfo()
    gpu, driver = _gpu()
    cores = usable_cores()
    isa = sorted(f for f in ISA_FLAGS if f in flags)
    return {
        "cpu": model,
        "cores": cores,
        "arch": platform.machine(),
        "isa": isa,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "avx512_vnni": "avx512_vnni" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": any(f.startswith("amx") for f in flags),
        "gpu": gpu,
        "gpu_driver": driver,
        "id": machine_id({"cpu": model, "arch": platform.machine(), "isa": isa, "cores": cores, "gpu": gpu,
                          "gpu_driver": driver}),
    }


def fingerprint(m: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a machine description that change results: two machines with one fingerprint measure alike."""
    return {k: m.get(k) for k in FINGERPRINT}


def same_machine(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two machine descriptions have the same fingerprint."""
    return fingerprint(a) == fingerprint(b)


def machine_id(m: Mapping[str, Any]) -> str:
    """A readable, stable folder name for a machine: CPU words, cores, and a hash of the fingerprint."""
    words = re.sub(r"\((r|tm)\)|processor|cpu|@|\d+-core", " ", str(m.get("cpu") or "unknown").lower())
    slug = "-".join(w for w in re.split(r"[^a-z0-9.]+", words) if w)[:28].strip("-.")
    digest = hashlib.sha256(json.dumps(fingerprint(m), sort_keys=True).encode()).hexdigest()[:6]
    return f"{slug}-{m.get('cores')}c-{digest}"


def describe(m: Mapping[str, Any]) -> str:
    """One line naming a machine, for reports and comparisons."""
    isa = [f for f in ("avx512_vnni", "avx512_bf16", "amx_tile", "asimddp") if f in (m.get("isa") or [])]
    if not m.get("isa"):  # records of older versions kept booleans only
        isa = [k for k in ("avx512_vnni", "avx512_bf16", "amx") if m.get(k)]
    gpu = f"; GPU {m['gpu']} (driver {m.get('gpu_driver') or '?'})" if m.get("gpu") else "; no GPU"
    return f"{m.get('cpu')}, {m.get('cores')} cores, {', '.join(isa) or 'no VNNI/BF16/AMX'}{gpu}"
