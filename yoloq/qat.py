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
import random
import shutil
import sys
from pathlib import Path

import yaml

from yoloq.config import DataRef, RunConfig, VariantConfig
from yoloq.data import load_split
from yoloq.data.calibration import content_hash
from yoloq.errors import BackendUnavailable, ExportError
from yoloq.models import file_sha256


def build_train_data(cfg: RunConfig, names: tuple[str, ...], eval_hashes: set[str], root: Path,
                     images: int, holdout: float = 0.15) -> Path:
    """Write a YOLO-layout dataset (symlinked images, converted labels) from the calibration sources.

    Returns:
        The ``data.yaml`` for Ultralytics' trainer.
    """
    index = {n: i for i, n in enumerate(names)}
    pool: dict[str, tuple[Path, list[str]]] = {}
    for ref in cfg.calibration.sources:
        split = load_split(DataRef(ref.dataset, ref.split), Path(cfg.base_dir))
        cats = dict(zip(split.category_ids, split.names))
        by_image: dict[int, list[str]] = {}
        sizes = {s.image_id: (s.width, s.height) for s in split.samples}
        for a in split.gt["annotations"]:
            name = cats.get(a["category_id"])
            if a.get("iscrowd") or name not in index or a["image_id"] not in sizes:
                continue
            w, h = sizes[a["image_id"]]
            x, y, bw, bh = a["bbox"]
            by_image.setdefault(a["image_id"], []).append(
                f"{index[name]} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        for s in split.samples:
            h = content_hash(s.path)
            if h not in eval_hashes:
                pool.setdefault(h, (s.path, by_image.get(s.image_id, [])))
    keys = sorted(pool)
    chosen = random.Random(cfg.calibration.seed).sample(keys, min(images, len(keys)))
    n_val = max(1, int(len(chosen) * holdout))
    if root.exists():
        shutil.rmtree(root)
    for part, ks in (("val", chosen[:n_val]), ("train", chosen[n_val:])):
        (root / "images" / part).mkdir(parents=True)
        (root / "labels" / part).mkdir(parents=True)
        for k in ks:
            img, rows = pool[k]
            (root / "images" / part / img.name).symlink_to(img.resolve())
            (root / "labels" / part / f"{img.stem}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
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


def export_qdq(ckpt: Path, imgsz: int, dest: Path) -> Path:
    """Export the QAT checkpoint to a Q/DQ INT8 ONNX (static batch 1) at ``dest``, weights stored as int8."""
    from ultralytics import YOLO

    from yoloq.progress import step
    from yoloq.qdq import fold_weight_quantizers

    try:
        with step("export QAT model to Q/DQ ONNX"):
            out = Path(YOLO(str(ckpt)).export(format="onnx", imgsz=imgsz, quantize=8, batch=1, dynamic=False,
                                              device="cpu"))
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
        raise ExportError(f"QAT ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(out), dest)
    fold_weight_quantizers(dest)  # INT8 weights at rest: 3.15 MB instead of 10.9 MB for YOLO11n
    return dest


def qat_variants(cfg: RunConfig, onnx_path: Path) -> list[VariantConfig]:
    """The QAT variants to evaluate: each configured INT8 format, loading the Q/DQ ONNX as it is."""
    from yoloq.backends.registry import validate_variant

    out = []
    for fmt in cfg.qat.formats:
        v = VariantConfig(fmt, "int8", name=f"{fmt}-int8-qat", options={"prequantized": str(onnx_path)})
        validate_variant(v, f"qat.formats[{fmt}]")
        out.append(v)
    return out


def run_qat(cfg: RunConfig, out_dir: Path | None = None) -> int:
    """``yoloq qat``: train, export, then evaluate the QAT variants into the run folder beside PTQ's."""
    from yoloq.pipeline import prepare_inputs, run_variants

    out_dir = Path(out_dir or cfg.output)
    inputs = prepare_inputs(cfg, out_dir)
    if inputs.source.kind != "pt":
        raise BackendUnavailable("QAT trains a PyTorch model: give a .pt source")
    work = out_dir / "artifacts" / "qat"
    eval_hashes = {content_hash(s.path) for s in inputs.evalset.samples}
    data = build_train_data(cfg, inputs.source.names, eval_hashes, work / "data", cfg.qat.images)
    print(f"yoloq qat: {cfg.qat.epochs} epoch(s) on {cfg.qat.images} train images at {cfg.qat.imgsz or cfg.imgsz}",
          file=sys.stderr)
    ckpt = train(cfg, inputs.source.path, data, work)
    onnx_path = export_qdq(ckpt, cfg.imgsz, work / f"{inputs.source.name}-qat-int8.onnx")
    named = onnx_path.with_name(f"{onnx_path.stem}-{file_sha256(onnx_path)[:12]}.onnx")  # the key follows the content
    onnx_path = onnx_path.replace(named)
    variants = [*cfg.variants, *qat_variants(cfg, onnx_path)]  # PTQ (reused when already run) beside QAT
    return run_variants(dataclasses.replace(cfg, variants=tuple(variants)), inputs, variants)
