"""Quantization-aware training: fine-tune with fake quantization on train images, export real INT8.

yoloq uses Ultralytics' own trainer with ``quantize=8``: it inserts NVIDIA ModelOpt fake-quantizers
(calibrated once, INT8 per-channel weights and per-tensor activations, the head's output layers in
float), fine-tunes, and exports an ONNX graph whose Q/DQ nodes carry the learned ranges. That Q/DQ
ONNX runs as INT8 in ONNX Runtime as it is, and OpenVINO reads its Q/DQ as INT8 FakeQuantize. Why
this route: it is the trainer users already fine-tune with (same losses, augmentation, schedules),
it keeps BatchNorm trainable and folds it at export, and its ranges are read directly by the
runtimes, so no second calibration happens after training.

The training data is built from the calibration sources' train splits (labels converted to YOLO
rows), with a held-out part of them as the trainer's validation set: evaluation images are never seen.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from yoloq.backends.onnx_base import head_args
from yoloq.backends.registry import backend_class, resolve_variant
from yoloq.config import Precision, RunConfig, VariantConfig
from yoloq.data.pool import ImagePool
from yoloq.errors import BackendUnavailable, ExportError
from yoloq.machine_load import run_lock
from yoloq.models import file_sha256, resolve_model
from yoloq.progress import say, set_library_log, step


def build_train_data(pool: ImagePool, names: tuple[str, ...], root: Path, images: int,
                     holdout: float = 0.15) -> Path:
    """Write a YOLO-layout dataset (symlinked images, converted labels) from the front of the image pool.

    Returns:
        The ``data.yaml`` for Ultralytics' trainer.
    """
    chosen = pool.front(images, "qat.images")
    split = pool.labelled(chosen, names, "qat")
    rows: dict[int, list[str]] = {}
    for a in split.gt["annotations"]:
        s = split.samples[a["image_id"] - 1]
        if a.get("iscrowd"):
            continue
        x, y, bw, bh = a["bbox"]
        w, h = s.width, s.height
        rows.setdefault(s.image_id, []).append(
            f"{a['category_id']} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
    n_val = max(1, int(len(chosen) * holdout))
    if root.exists():
        shutil.rmtree(root)
    for part, samples in (("val", split.samples[:n_val]), ("train", split.samples[n_val:])):
        (root / "images" / part).mkdir(parents=True)
        (root / "labels" / part).mkdir(parents=True)
        for s in samples:
            lines = rows.get(s.image_id, [])
            (root / "images" / part / s.path.name).symlink_to(s.path.resolve())
            (root / "labels" / part / f"{s.path.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root.resolve()), "train": "images/train", "val": "images/val",
                                    "names": dict(enumerate(names))}))
    return data


def _freeze_batchnorm(trainer: object) -> None:
    """Keep BatchNorm statistics fixed while fine-tuning (standard for QAT; the affine terms still train).

    A few small batches would otherwise replace the pretrained running statistics, and a checkpoint
    whose BatchNorms carry folded biases (as the shared YOLO11n does) would lose its calibration.
    """
    import torch

    for m in trainer.model.modules():  # type: ignore[attr-defined]
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def train(cfg: RunConfig, source_pt: Path, data: Path, out: Path) -> Path:
    """Fine-tune with fake quantization; return the QAT checkpoint.

    Raises:
        BackendUnavailable: When NVIDIA ModelOpt (Ultralytics' QAT engine) is not installed.
        ExportError: When training fails.
    """
    from importlib.util import find_spec

    if find_spec("modelopt") is None:
        raise BackendUnavailable("QAT needs NVIDIA ModelOpt: pip install nvidia-modelopt")
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    LOGGER.setLevel(logging.WARNING)
    q = cfg.qat
    try:
        model = YOLO(str(source_pt))
        model.add_callback("on_train_batch_start", _freeze_batchnorm)
        model.train(data=str(data), epochs=q.epochs, imgsz=q.imgsz or cfg.imgsz, batch=q.batch, lr0=q.lr0,
                    lrf=1.0, warmup_epochs=0, optimizer="SGD", momentum=0.9, quantize=8, device="cpu", workers=0,
                    project=str(out.resolve()), name="train", exist_ok=True, plots=False, amp=False,
                    seed=cfg.calibration.seed, deterministic=True, close_mosaic=0, mosaic=q.mosaic, verbose=False)
    except Exception as e:  # noqa: BLE001 - training raises many kinds
        raise ExportError(f"QAT training failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    ckpt = out / "train" / "weights" / "last.pt"
    if not ckpt.is_file():
        raise ExportError(f"QAT training wrote no checkpoint at {ckpt}")
    return ckpt


def export_qdq(ckpt: Path, imgsz: int, dest: Path, **head: Any) -> Path:
    """Export the QAT checkpoint to a Q/DQ INT8 ONNX (static batch 1) at ``dest``, weights stored as int8.

    ``head`` selects the head branch as for every other export (:func:`yoloq.backends.onnx_base.head_args`).
    """
    from ultralytics import YOLO

    from yoloq.qdq import fold_weight_quantizers

    try:
        with step("export QAT model to Q/DQ ONNX"):
            out = Path(YOLO(str(ckpt)).export(format="onnx", imgsz=imgsz, quantize=8, batch=1, dynamic=False,
                                              device="cpu", **head))
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
        raise ExportError(f"QAT ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(out), dest)
    fold_weight_quantizers(dest)  # INT8 weights at rest: 3.15 MB instead of 10.9 MB for YOLO11n
    return dest


def qat_variants(cfg: RunConfig, onnx_path: Path) -> tuple[list[VariantConfig], dict[str, dict[str, Any]]]:
    """The QAT variants (each configured format running the Q/DQ ONNX as it is) and their PTQ pairs.

    A QAT variant is paired with the config's first INT8 variant of the same format, when there is one.
    """
    from yoloq.provenance import machine

    out, pairs = [], {}
    here = machine()
    for fmt in cfg.qat.formats:
        options = backend_class(fmt)().qdq_variant_options(onnx_path, here)
        v = resolve_variant(VariantConfig(fmt, Precision.INT8, name=f"{fmt}-int8-qat", options=options),
                            f"qat.formats[{fmt}]")
        out.append(v)
        ptq = next((p for p in cfg.variants if p.format == fmt and p.precision == Precision.INT8), None)
        pairs[v.label] = {"role": "qat", "ptq": ptq.label} if ptq else {"role": "qat"}
    return out, pairs


def run_qat(cfg: RunConfig, out_dir: Path | None = None) -> int:
    """``yoloq qat``: train, export, then evaluate the QAT variants into the run folder beside PTQ's."""
    from yoloq.pipeline import default_out

    out_dir = Path(out_dir) if out_dir else default_out(cfg)
    with run_lock(out_dir):
        return _run_qat(cfg, out_dir)


def _run_qat(cfg: RunConfig, out_dir: Path) -> int:
    from yoloq.pipeline import prepare_inputs, run_variants

    inputs = prepare_inputs(cfg, out_dir)
    if inputs.source.kind != "pt":
        raise BackendUnavailable("QAT trains a PyTorch model: give a .pt source")
    work = out_dir / "artifacts" / "qat"
    data = build_train_data(inputs.pool, inputs.source.names, work / "data", cfg.qat.images)
    say(f"yoloq qat: {cfg.qat.epochs} epoch(s) on {min(cfg.qat.images, len(inputs.pool))} train images at "
        f"{cfg.qat.imgsz or cfg.imgsz}")
    set_library_log(out_dir / "logs" / "libraries.log")
    start = resolve_model(cfg.qat.start, Path(cfg.base_dir)) if cfg.qat.start else inputs.source.path
    say(f"  training starts from {start.name}")
    with step("QAT training (Ultralytics trainer)"):
        ckpt = train(cfg, start, data, work)
    onnx_path = export_qdq(ckpt, cfg.imgsz, work / f"{inputs.source.name}-qat-int8.onnx",
                           **head_args(inputs.source, cfg.eval.max_det)[1])
    named = onnx_path.with_name(f"{onnx_path.stem}-{file_sha256(onnx_path)[:12]}.onnx")  # the key follows the content
    onnx_path = onnx_path.replace(named)
    qat, pairs = qat_variants(cfg, onnx_path)
    for p in pairs.values():
        p["start"] = start.name
    variants = [*cfg.variants, *qat]  # PTQ (reused when already run) beside QAT
    return run_variants(dataclasses.replace(cfg, variants=tuple(variants)), inputs, variants, pairs)
