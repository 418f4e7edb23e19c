"""MCT's quantization-aware training for the IMX500, inside the export worker (the side environment): the model is
trained through MCT's own quantizers, the very ones the export keeps.

Distillation before MCT (:mod:`yoloq.backends.imx500.distill`) taught the weights yoloq's emulation of the sensor, and
MCT then put in its own quantizers (thresholds chosen again, every output quantized, mixed-precision bit widths), which
undid most of it. Here Ultralytics' export runs as always, but where it calls MCT's post-training quantization, MCT's
QAT is called instead with the same arguments (its initialisation is that post-training quantization: the same
thresholds, mixed precision and weight memory), the wrapped model is trained for a step budget against the FP32 model's
own outputs on the calibration images (mirrored and zoomed: no label is read), and MCT's finalisation turns it into the
inferable quantized model the export continues with. Only the quantized layers' weights and biases learn
(straight-through rounding on MCT's per-channel grids); the activations' power-of-two thresholds stay the ones MCT
chose, and the DFL's projection stays fixed. The step, loss, augmentation and learning rate are yoloq's distillation's
(:mod:`yoloq.recover.distill`, loaded from its file: the worker cannot import yoloq).

Imported by the worker script only (it runs in the side environment with MCT); nothing here runs in yoloq's process.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Callable

RESULT: dict[str, Any] = {}  # what training reached and cost, for the worker's reply


def recipe() -> Any:
    """yoloq's distillation module (:mod:`yoloq.recover.distill`), loaded from its file: numpy and torch only."""
    name = "yoloq_recover_distill"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[2] / "recover" /
                                                      "distill.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


def _head(out: Any) -> Any:
    """The IMX-ready model's output (decoded boxes [B, N, 4], scores [B, N, nc]) as the raw head output the
    distillation loss reads ([B, 4 + nc, N])."""
    import torch

    return torch.cat([out[0], out[1]], dim=-1).transpose(1, 2)


def trainable(model: Any) -> list[Any]:
    """The parameters QAT trains: the quantized layers' weights and biases. All others stay frozen: the activation
    quantizers' and the weights' thresholds (MCT's power-of-two and per-channel choices) and the DFL's fixed
    projection (part of the box decode)."""
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.rsplit(".", 1)[-1] in ("weight", "bias") and "_dfl_" not in f"_{name}"
                         and "activation_holder" not in name)
        if p.requires_grad:
            params.append(p)
    return params


def train(student: Any, teacher: Any, images: Any, imgsz: int, steps: int, report: Callable[[int, int], None],
          augment: str = "flip-scale") -> dict[str, Any]:
    """Train ``student`` (MCT's QAT model) towards ``teacher`` (the FP32 model) on ``images`` (uint8 NCHW) for
    ``steps`` steps (each batch augmented as ``augment``, one of the recipe's ``AUGMENTS``), the recipe's first
    ``HELD`` images held out to judge it. Returns what it reached; the weights go back
    to MCT's initial ones where training did not lower the held-out loss."""
    import numpy as np
    import torch

    r = recipe()
    torch.manual_seed(0)
    params = trainable(student)
    pixels = [torch.from_numpy(images[i:i + 1]) for i in range(len(images))]  # uint8: a quarter of float32's memory
    held, train_set = pixels[:r.HELD], pixels[r.HELD:] or pixels[:r.HELD]
    fit = train_set[:2 * r.HELD]  # some training images, unaugmented: does training fit what it sees?
    with torch.no_grad():
        targets = {id(x): _head(teacher(x / 255.0)) for x in held + fit}

    def loss_on(xs: list) -> float:
        student.eval()
        with torch.no_grad():
            return float(np.mean([r.output_loss(_head(student(x / 255.0)), targets[id(x)], imgsz).item() for x in xs]))

    before, fit_before, start = loss_on(held), loss_on(fit), copy.deepcopy(student.state_dict())
    opt = torch.optim.Adam(params, lr=r.LR)
    rng, t0 = np.random.default_rng(0), time.perf_counter()
    student.train()
    for step in range(steps):
        idx = rng.choice(len(train_set), min(r.BATCH, len(train_set)), replace=False)
        x = r.augment_batch(torch.cat([train_set[i] for i in idx]) / 255.0, augment, rng)
        with torch.no_grad():
            t = _head(teacher(x))
        loss = r.output_loss(_head(student(x)), t, imgsz)
        opt.zero_grad()
        loss.backward()
        opt.step()
        report(step + 1, steps)
    after, fit_after = loss_on(held), loss_on(fit)
    if after >= before:
        student.load_state_dict(start)
    return {"steps": steps, "images_seen": steps * min(r.BATCH, len(train_set)), "train_images": len(train_set),
            "held_out_images": len(held), "held_out_loss_before": before, "held_out_loss_after": after,
            "train_loss_before": fit_before, "train_loss_after": fit_after, "train_loss_images": len(fit),
            "kept": after < before, "lr": r.LR, "batch": r.BATCH, "augment": augment,
            "parameters": sum(p.numel() for p in params), "s": round(time.perf_counter() - t0, 1)}


def use_qat(steps: int, images_path: str, imgsz: int, report: Callable[[int, int], None]) -> None:
    """Ultralytics' export with MCT's QAT in place of its post-training quantization: initialised as that would
    quantize, trained for ``steps`` steps on the images in ``images_path`` (uint8 NCHW ``.npy``), finalised."""
    import model_compression_toolkit as mct
    import numpy as np

    init = mct.qat.pytorch_quantization_aware_training_init_experimental
    finalize = mct.qat.pytorch_quantization_aware_training_finalize_experimental

    def quantize(in_module: Any, representative_data_gen: Any, target_resource_utilization: Any = None,
                 core_config: Any = None, target_platform_capabilities: Any = None) -> tuple[Any, Any]:
        teacher = copy.deepcopy(in_module).eval()
        model, info = init(in_module, representative_data_gen, target_resource_utilization=target_resource_utilization,
                           core_config=core_config, target_platform_capabilities=target_platform_capabilities)
        RESULT.update(train(model, teacher, np.load(images_path), imgsz, steps, report))
        model.eval()
        return finalize(model), info

    mct.ptq.pytorch_post_training_quantization = quantize
