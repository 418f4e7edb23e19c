"""Deploy bundles that run without yoloq: each CPU format's predict.py, with yoloq, PyTorch and Ultralytics made
unimportable, gives yoloq's own detections on evaluation images."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, run_cli, unavailable

from yoloq.backends.base import Artifact
from yoloq.backends.registry import get_backend
from yoloq.config import EvalConfig
from yoloq.postprocess import postprocess
from yoloq.preprocess import prepare, read_image

# the modules each bundle's runtime is (ExecuTorch's Python runtime takes and gives torch tensors: torch comes with it)
RUNTIMES = {"onnxruntime": {"onnxruntime"}, "openvino": {"openvino"}, "litert": {"ai_edge_litert"},
            "executorch": {"executorch", "torch"}, "ncnn": {"ncnn"},
            "imx500": {"onnxruntime", "onnxruntime_extensions", "mct_quantizers", "edgemdt_cl", "torch", "torchvision"}}


def _blocked(fmt: str) -> str:
    """predict.py run with yoloq, Ultralytics and (unless the runtime needs it) PyTorch unimportable: what it needs
    is the runtime, numpy and OpenCV."""
    hidden = [m for m in ("yoloq", "torch", "torchvision", "ultralytics") if m not in RUNTIMES[fmt]]
    return (f"import sys, runpy\nfor m in {hidden!r}:\n    sys.modules[m] = None\n"
            "sys.argv = ['predict.py', *sys.argv[1:]]\nrunpy.run_path('predict.py', run_name='__main__')\n")


def _check_bundle(out: Path, variant: str, imgsz: int, head: str) -> int:
    """Run the bundle's predict.py with yoloq, PyTorch and Ultralytics unimportable on four evaluation images and
    compare its detections with yoloq's own postprocessing of the same export; returns how many it found."""
    meta = json.loads((out / "meta.json").read_text())
    fmt = variant.split("-")[0]
    assert meta["input"]["size"] == imgsz and meta["head"] == head and meta["names"][0] == "person"
    assert meta["letterbox"]["pad"] == 114 and meta["calibration"]["sha256"]
    imports = {n.names[0].name.split(".")[0] if isinstance(n, ast.Import) else (n.module or "").split(".")[0]
               for n in ast.walk(ast.parse((out / "predict.py").read_text())) if isinstance(n, (ast.Import,
                                                                                               ast.ImportFrom))}
    assert imports <= {"__future__", "argparse", "json", "sys", "pathlib", "cv2", "numpy", *RUNTIMES[fmt]}, imports
    assert (out / "requirements.txt").read_text().split()[0] in ("onnxruntime", "openvino", "ai-edge-litert",
                                                                "executorch", "ncnn")
    images = [str(p) for p in sorted((SHARED / "datasets" / "coco-mini" / "val2017").glob("*.jpg"))[:4]]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    proc = subprocess.run([sys.executable, "-c", _blocked(fmt), *images, "--json", "dets.json", "--draw", "drawn"],
                          cwd=out, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((out / "dets.json").read_text())
    assert len(list((out / "drawn").glob("*.jpg"))) == len(images)
    runtime = get_backend(fmt).load(Artifact(out / meta["model_file"], fmt, meta["precision"]), 2)
    post = EvalConfig(conf=0.25, iou=0.7, max_det=300, multi_label=False)
    total = 0
    for f in images:
        x, lbs = prepare([read_image(Path(f))], imgsz)
        want = postprocess(runtime.predict(x), lbs, post, head == "end2end")[0]
        have = got[f]
        assert len(have) == len(want), f
        total += len(want)
        if len(want):
            np.testing.assert_allclose([d["box"] for d in have], want.boxes, atol=0.02)
            np.testing.assert_allclose([d["score"] for d in have], want.scores, atol=1e-5)
            assert [d["class"] for d in have] == want.classes.tolist()
    return total


@pytest.mark.shared
@pytest.mark.parametrize("variant", ["onnxruntime-int8", "openvino-fp16", "litert-int8"])
def test_a_bundle_runs_without_yoloq_and_gives_its_detections(tmp_path: Path, variant: str):
    out = tmp_path / "bundle"
    proc = run_cli("export", "configs/smoke.yaml", "--variant", variant, "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _check_bundle(out, variant, 320, "nms") > 0


@pytest.mark.shared
def test_an_nms_free_bundle_decodes_the_models_own_top_k(tmp_path: Path):
    """A random-init YOLO26n with its NMS-free one-to-one branch (``eval.nms: false``): the bundle's end-to-end decode
    gives yoloq's detections."""
    import yaml
    from families import build, config
    from ultralytics import YOLO

    names = YOLO(str(SHARED / "models" / "yolo11n.pt")).names
    pt = build("yolo26n", tmp_path, names)
    cfg = config(pt, tmp_path / "run", [{"format": "onnxruntime", "precision": "fp32"}], nms=False)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bundle"
    proc = run_cli("export", str(tmp_path / "cfg.yaml"), "--variant", "onnxruntime-fp32", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _check_bundle(out, "onnxruntime-fp32", 320, "end2end") > 0


@pytest.mark.shared
def test_an_executorch_bundle_runs_its_program(executorch_run: dict, tmp_path: Path):
    """The ExecuTorch bundle: model.pte run by ExecuTorch's Python runtime alone gives yoloq's detections (the
    session's ExecuTorch run's export, reused from a copy: the export removes its work folder when done)."""
    out = tmp_path / "bundle"
    shutil.copytree(executorch_run["dir"], out / "work")
    proc = run_cli("export", str(executorch_run["cfg"]), "--variant", "executorch-fp32", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "export executorch" not in proc.stderr  # the run's export, reused
    assert (out / "requirements.txt").read_text().split()[0] == "executorch"
    assert _check_bundle(out, "executorch-fp32", 320, "nms") > 0


@pytest.mark.shared
@pytest.mark.full  # an NCNN export and its bundle: 1.5 min on 2 cores; the contract tests run NCNN in the default tier
def test_an_ncnn_bundle_runs_its_model(tmp_path: Path):
    """The NCNN INT8 bundle (8-bit 3x3 weights, so the model carries the ncnn options it needs):
    model.ncnn.param/.bin and ncnn-options.json run by ncnn's runtime alone give yoloq's detections."""
    import yaml

    from yoloq.backends.registry import get_backend
    from yoloq.errors import BackendUnavailable

    try:
        get_backend("ncnn").version()
    except BackendUnavailable as e:
        unavailable("ncnn (pip install -e .)", e)
    precision = "int8"
    cfg = yaml.safe_load(Path("configs/smoke.yaml").read_text())
    cfg["variants"] = [{"format": "ncnn", "precision": precision, "options": {"weight_bits_3x3": 8}}]
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg | {"output": str(tmp_path / "run")}))
    out = tmp_path / "bundle"
    proc = run_cli("export", str(tmp_path / "cfg.yaml"), "--variant", f"ncnn-{precision}", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "requirements.txt").read_text().split()[0] == "ncnn"
    # the 8-bit 3x3 convolutions carry their kernel in the file (ncnn's featmask: its int8 GEMM), nothing beside it
    assert " 31=64" in next(out.rglob("*.param")).read_text() and not list(out.rglob("ncnn-options.json"))
    assert _check_bundle(out, f"ncnn-{precision}", 320, "nms") > 0
