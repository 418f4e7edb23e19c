"""Shared fixtures: the shared data folder and one real end-to-end run of the smoke config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from yoloq.paths import ENV_SHARED, REPO_ROOT, shared_root

SHARED = shared_root()

# In CI (``CI=true``, as .ci/run sets it) a set-up that cannot complete fails the test, naming the step: a green CI
# means a fresh machine set every format up. Elsewhere (a laptop without Java, say) it stays a skip with the reason.
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
SHARED_MISSING = None if (SHARED / "models" / "yolo11n.pt").is_file() else (
    f"the shared models and datasets are not at {SHARED} (no models/yolo11n.pt): put them there or set {ENV_SHARED}")


def unavailable(step: str, why: object) -> None:
    """A set-up step that could not complete: fails the test in CI, skips it elsewhere; the message names ``step``."""
    message = f"{step}: {why}"
    if IN_CI:
        pytest.fail(f"set-up failed in CI (CI=true): {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers (pytest-xdist, ``-n auto``) load each other's CPU by design: every latency pass would be
    # flagged for outside load, and a resumed run re-times flagged records, which the resume tests forbid.
    # Latency figures are never asserted on in tests; test_machine_load checks the flag at its real threshold.
    os.environ.setdefault("YOLOQ_OUTSIDE_LOAD_FLAG", "1.0")


FULL_REASON = ("full tier: the family matrix and the slowest end-to-end variants (python -m pytest --full); the "
               "default tier covers each feature and format once")


def pytest_sessionstart(session):  # noqa: ANN001 - pytest hook
    if IN_CI and SHARED_MISSING is not None:  # once, loudly: without the data every shared test would skip, exit 0
        pytest.exit(f"CI: {SHARED_MISSING}", returncode=3)


def pytest_report_header(config):  # noqa: ANN001 - pytest hook
    return [f"yoloq: shared data {'MISSING: ' + SHARED_MISSING if SHARED_MISSING else 'at ' + str(SHARED)}; "
            f"{'CI=true: a set-up that cannot complete fails' if IN_CI else 'a set-up that cannot complete skips'}"]


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001 - pytest hook
    if SHARED_MISSING:
        terminalreporter.write_line(f"yoloq: every test that reads shared data was skipped: {SHARED_MISSING}",
                                    red=True, bold=True)


def pytest_addoption(parser):  # noqa: ANN001 - pytest hook
    parser.addoption("--full", action="store_true", default=False,
                     help="also run the full tier: every YOLO family through every format, and the slowest variants "
                          "of end-to-end tests (also: YOLOQ_FULL_TESTS=1)")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):  # noqa: ANN001 - pytest hook
    skip = None if SHARED_MISSING is None else pytest.mark.skip(reason=SHARED_MISSING)
    full = config.getoption("--full") or os.environ.get("YOLOQ_FULL_TESTS") == "1"
    for item in items:
        if skip is not None and "shared" in item.keywords:
            item.add_marker(skip)
        if not full and "full" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=FULL_REASON))
        # one worker runs the session's smoke run and every test that reads it, and the Ray cluster tests
        # (one local cluster at a time): with ``--dist loadgroup`` the rest spreads over the other workers
        params = getattr(getattr(item, "callspec", None), "params", {})
        contract = getattr(item, "originalname", "") == "test_backend_contract"
        if contract and (params.get("fmt"), params.get("precision")) in SMOKE:
            item.add_marker(pytest.mark.xdist_group("smoke"))  # reads the smoke run's exports
        elif "smoke_run" in getattr(item, "fixturenames", ()) or item.path.name == "test_ray.py":
            item.add_marker(pytest.mark.xdist_group("smoke"))
        elif item.path.name == "test_rknn.py":  # one worker sets the RKNN environment up, then uses it
            item.add_marker(pytest.mark.xdist_group("rknn"))
        elif item.path.name == "test_emulate.py":  # one worker scores the emulated run its tests read
            item.add_marker(pytest.mark.xdist_group("emulate"))
        elif item.path.name == "test_imx500.py":  # one worker makes the one IMX500 export its tests share
            item.add_marker(pytest.mark.xdist_group("imx500"))
        elif "executorch_run" in getattr(item, "fixturenames", ()) or (contract and params.get("fmt") == "executorch"):
            item.add_marker(pytest.mark.xdist_group("executorch"))  # one worker lowers YOLO11n to ExecuTorch once


SMOKE = {(v["format"], v["precision"]) for v in yaml.safe_load((REPO_ROOT / "configs" / "smoke.yaml").read_text())
         ["variants"]}


def side_environment(fmt: str) -> Path | None:
    """The environment a format's toolkit needs beside yoloq's (``yoloq setup FORMAT``), set up once (workers share
    it through its lock); the test is skipped with the reason where it cannot install here."""
    from yoloq.backends.registry import get_backend
    from yoloq.errors import BackendUnavailable

    try:
        return get_backend(fmt).setup()
    except BackendUnavailable as e:
        unavailable(f"yoloq setup {fmt}", e)


def run_cli(*args: str, cwd: Path = REPO_ROOT, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run ``python -m yoloq ARGS`` and capture its output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "yoloq", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="session")
def executorch_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ExecuTorch FP32 and INT8 of YOLO11n on the smoke config's first 2 images, run once (each lowering takes ~1 min),
    and the fastest INT8 program (split convolutions, SiLU in int8): the contract tests read its exports, the bundle
    test bundles a copy of it."""
    from yoloq.backends.registry import get_backend
    from yoloq.errors import BackendUnavailable

    try:
        get_backend("executorch").version()
    except BackendUnavailable as e:
        unavailable("ExecuTorch (pip install -e .)", e)
    tmp = tmp_path_factory.mktemp("executorch")
    cfg = yaml.safe_load((REPO_ROOT / "configs" / "smoke.yaml").read_text())
    fast = {"format": "executorch", "precision": "int8", "name": "executorch-int8-fast",
            "options": {"split_convs": True, "int8_silu": True}}  # the split convolutions as two and SiLU in int8
    cfg |= {"variants": [*({"format": "executorch", "precision": p} for p in ("fp32", "int8")), fast],
            "data": cfg["data"] | {"max_images": 2}, "output": str(tmp / "run"),
            "latency": {"warmup": 1, "min_runs": 3, "min_seconds": 0, "threads": 2, "images": 1}}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", str(tmp / "cfg.yaml"), "--out", str(tmp / "run"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return {"cfg": tmp / "cfg.yaml", "dir": tmp / "run"}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run ``configs/smoke.yaml`` once (every CPU backend, imgsz 320, 12 images) and return its outputs."""
    out = tmp_path_factory.mktemp("smoke")
    proc = run_cli("run", "configs/smoke.yaml", "--out", str(out))
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()] \
        if (out / "records.jsonl").is_file() else []
    return {"dir": out, "proc": proc, "records": {r["name"]: r for r in records}}
