"""Quantization-aware distillation: the FP32 model is the teacher, its raw head output on unlabelled calibration images
the target; the student is the same model with the target format's arithmetic in fake quantizers (per-channel
symmetric weights on the format's grid, a per-tensor int8 scale on each quantized convolution's input, symmetric or
with the format's zero point, and where the format requantizes them, the convolution's output and its SiLU's sigmoid
and product; all rounded with a straight-through gradient). Only the quantized convolutions' weights and biases
learn (and, where asked, each one's input scale); the weight scales stay the format's own, so what is learned drops
into its file. No label is read and no evaluation image is seen.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

LR = 1e-5  # Adam: the weights move by a fraction of a quantization step per update
STEP_LR = 5e-4  # Adam on each learned input step's logarithm: at most about 0.05% a step, ~35% over 600 steps
BATCH = 2
HELD = 4  # calibration images held out of training to judge the result (the teacher's targets, not labels)
AUGMENTS = ("none", "flip", "flip-scale")
LOSSES = ("mse", "detection")
SCHEDULES = ("constant", "cosine")  # the learning rate over the budget: held, or decayed to 0 along a half cosine
SCALE = (0.7, 1.3)  # flip-scale: each training image zoomed by a factor drawn from this range, at a random offset
PAD = 114 / 255  # the letterbox's gray, where a zoomed-out image leaves the frame empty


@dataclass(frozen=True)
class Grid:
    """One convolution's format arithmetic: weight scales per output channel, the largest integer, input scale, and
    the center subtracted from the input before it is quantized (0: none; the border is padded before the shift, so
    padding reads zero as the format's explicit padding does). ``input_bounds``: the integers the input may take
    (an asymmetric uint8 input with zero point z: ``(-z, 255 - z)``); ``output_scale``: where the format also
    quantizes the convolution's output (as ONNX Runtime's QLinearConv does), its scale (0: the output stays float),
    within ``output_bounds``. ``silu``: where the format also quantizes the SiLU after the convolution (ONNX
    Runtime: a QLinearSigmoid and a QLinearMul), the sigmoid's scale and bounds, then the product's."""

    weight_scales: np.ndarray
    qmax: int
    input_scale: float
    center: float = 0.0
    input_bounds: tuple[int, int] = (-127, 127)
    output_scale: float = 0.0
    output_bounds: tuple[int, int] = (-127, 127)
    silu: tuple[float, tuple[int, int], float, tuple[int, int]] | None = None


def _fake_quantize(module: Any, grid: Grid, learn_step: bool = False) -> Any:
    """Put the format's arithmetic into ``module``'s forward. ``learn_step``: the input's int8 step (1 / scale) is
    a parameter too, learned as LSQ learns it (its gradient through the rounding and the clip); returned, else
    None."""
    import torch
    import torch.nn.functional as F

    ws = torch.tensor(np.asarray(grid.weight_scales, np.float32)).view(-1, 1, 1, 1)
    a, c = float(grid.input_scale), float(grid.center)
    (lo, hi), (olo, ohi), o = grid.input_bounds, grid.output_bounds, float(grid.output_scale)
    pad = (0, 0) if not c else tuple(module.padding)
    log_step = torch.nn.Parameter(torch.tensor(-math.log(a), dtype=torch.float32)) if learn_step else None

    def ste(v: Any) -> Any:
        return v + (torch.round(v) - v).detach()

    def forward(x: Any) -> Any:
        if c:
            x = F.pad(x, (pad[1], pad[1], pad[0], pad[0])) - c
        if log_step is None:
            xq = torch.clamp(ste(x * a), lo, hi) / a
        else:
            d = torch.exp(log_step)
            xq = ste(torch.clamp(x / d, lo, hi)) * d
        wq = torch.clamp(ste(module.weight * ws), -grid.qmax, grid.qmax) / ws
        y = F.conv2d(xq + c, wq, module.bias, module.stride, (0, 0) if c else module.padding, module.dilation,
                     module.groups)
        return torch.clamp(ste(y * o), olo, ohi) / o if o else y

    module.forward = forward
    return log_step


def _fake_silu(parent: Any, grid: Grid) -> None:
    """Put the format's SiLU (its sigmoid, then the product, each quantized) into ``parent``'s forward: an
    Ultralytics ``Conv`` whose ``conv`` already computes the format's convolution. (Its ``act`` module is shared
    by every model in the process, so the parent's forward is replaced, never the activation.)"""
    import torch

    sa, (slo, shi), pa, (plo, phi) = grid.silu

    def ste(v: Any) -> Any:
        return v + (torch.round(v) - v).detach()

    def forward(x: Any) -> Any:
        y = parent.conv(x)
        sig = torch.clamp(ste(torch.sigmoid(y) * sa), slo, shi) / sa
        return torch.clamp(ste(y * sig * pa), plo, phi) / pa

    parent.forward = forward


def make_student(model: Any, grids: dict[str, Grid], learn_steps: bool = False) -> tuple[Any, dict[str, Any]]:
    """``model`` (changed in place; eval mode: batch norms are fused) computing each of ``grids``' convolutions (by
    module name) in the format's arithmetic, every parameter frozen; with ``learn_steps``, the input steps that learn
    (by module name)."""
    import torch

    student = model.eval()
    named = dict(student.named_modules())
    for p in student.parameters():
        p.requires_grad_(False)
    log_steps: dict[str, Any] = {}
    for name, grid in grids.items():
        m = named[name]
        log_step = _fake_quantize(m, grid, learn_steps)
        if log_step is not None:
            log_steps[name] = log_step
        parent = named.get(name.rpartition(".")[0])
        if grid.silu is not None:
            if not isinstance(getattr(parent, "act", None), torch.nn.SiLU) or getattr(parent, "conv", None) is not m:
                raise ValueError(f"distill: {name} has a SiLU grid but its parent is not a Conv with a SiLU")
            _fake_silu(parent, grid)
    return student, log_steps


def output_loss(y: Any, t: Any, imgsz: int, kind: str = "mse") -> Any:
    """How far the student's raw head output ``y`` [B, 4 + nc, N] is from the teacher's ``t``.

    ``mse``: the mean squared error of every value, boxes divided by the input size so boxes and scores weigh alike.
    (Weighting each anchor by the teacher's best score was tried: 96.3% kept on the tuning split against 98.1%
    unweighted, though with 85 steps against 485: not adopted.)

    ``detection``: what a detector distils by: binary cross-entropy of the class scores against the teacher's as soft
    targets (less the teacher's own entropy, so it is 0 at equality), which weighs the small scores that decide the
    ranking far more than their squared error does, plus each anchor's box L1 (in input sizes) weighted by the
    teacher's best score, so boxes count where the teacher sees something. (On YOLO11n's NCNN INT8, 600 augmented
    steps: 97.6% kept on coco1k's tuning split against the squared error's 99.6%: offered, not the default.)"""
    if kind == "mse":
        scale = t.new_ones(t.shape[1], 1)
        scale[:4] = 1.0 / imgsz  # boxes in input pixels: divided so boxes and scores weigh alike
        return (((y - t) * scale) ** 2).mean()
    import torch

    eps = 1e-6
    p, q = y[:, 4:].clamp(eps, 1 - eps), t[:, 4:].clamp(eps, 1 - eps)
    bce = -(q * torch.log(p) + (1 - q) * torch.log(1 - p))
    entropy = -(q * torch.log(q) + (1 - q) * torch.log(1 - q))
    weight = t[:, 4:].amax(1, keepdim=True)  # [B, 1, N]
    box = ((y[:, :4] - t[:, :4]).abs() / imgsz * weight).sum() / weight.sum().clamp_min(eps) / 4
    return (bce - entropy).mean() + box


def augment_batch(x: Any, kind: str, rng: np.random.Generator) -> Any:
    """The training batch as the student and the teacher both see it: each image mirrored left-right with
    probability 1/2 (``flip``), and also zoomed in or out about a random point with the letterbox's gray around it
    (``flip-scale``). The teacher labels the augmented image itself, so every augmentation is exact: it only makes
    more distinct inputs out of the same unlabelled images."""
    import torch
    import torch.nn.functional as F

    if kind == "none":
        return x
    out = []
    for img in x.split(1):
        if rng.random() < 0.5:
            img = torch.flip(img, dims=[3])
        if kind == "flip-scale":
            s = float(rng.uniform(*SCALE))
            tx, ty = (float(v) for v in rng.uniform(-1, 1, 2) * abs(1 - 1 / s))
            theta = torch.tensor([[[1 / s, 0, tx], [0, 1 / s, ty]]], dtype=img.dtype)
            grid = F.affine_grid(theta, list(img.shape), align_corners=False)
            img = F.grid_sample(img - PAD, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + PAD
        out.append(img)
    return torch.cat(out)


def lr_factor(done: float, schedule: str) -> float:
    """The learning rate's factor once ``done`` (0 to 1) of the budget is spent: 1 throughout (``constant``), or a
    half cosine from 1 to 0 (``cosine``)."""
    return 1.0 if schedule == "constant" else 0.5 * (1 + math.cos(math.pi * min(max(done, 0.0), 1.0)))


def distill(model: Any, grids: dict[str, Grid], images: list[np.ndarray], imgsz: int, minutes: float,
            threads: int, log: Callable[[str], None] = lambda s: None, steps: int = 0, augment: str = "none",
            loss: str = "mse", learn_steps: bool = False, schedule: str = "constant", lr: float = LR
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the quantized convolutions of ``model`` (a float torch detector whose output is the raw head output;
    ``grids`` by module name) to match its own FP32 output on ``images`` for ``minutes``, or for exactly ``steps``
    steps where given (the same model on any day: a budget in minutes trains as many steps as the machine's speed
    allows; another CPU rounds float32 differently, so it trains other weights). ``augment`` (one of
    :data:`AUGMENTS`) varies the training images (:func:`augment_batch`); the held-out images are judged as they are.
    ``loss`` (one of :data:`LOSSES`) is what training lowers and the held-out images are judged by
    (:func:`output_loss`). ``learn_steps``: each quantized convolution's input scale learns too (LSQ: it may learn to
    clip), else it stays the format's calibrated one. ``schedule`` (one of :data:`SCHEDULES`): the learning rates
    held over the budget, or decayed to 0 along a half cosine (the last steps move the weights by far less than a
    quantization step, so the rounding the run ends on is not one step's noise). ``lr``: Adam's learning rate of the
    weights and biases (each moves by about that much a step).

    Returns:
        ``{module name: (weight, bias, input scale)}`` (weights and biases as numpy arrays; all three the
        originals where training did not lower the held-out loss), and what it cost and reached (steps, images
        seen, held-out loss before and after, seconds).
    """
    import torch

    if augment not in AUGMENTS or loss not in LOSSES or schedule not in SCHEDULES:
        raise ValueError(f"distill: augment {augment!r} / loss {loss!r} / schedule {schedule!r}: expected one of "
                         f"{AUGMENTS} / {LOSSES} / {SCHEDULES}")
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(0)
    teacher = copy.deepcopy(model).eval()
    student, log_steps = make_student(model, grids, learn_steps)
    named = dict(student.named_modules())
    params = []
    for name in grids:
        m = named[name]
        for p in (m.weight, m.bias):
            if p is not None:
                p.requires_grad_(True)
                params.append(p)
    held = [torch.from_numpy(x) for x in images[:HELD]]
    train = [torch.from_numpy(x) for x in images[HELD:]] or held
    with torch.no_grad():
        targets_held = [teacher(x) for x in held]

    def held_loss() -> float:
        with torch.no_grad():
            return float(np.mean([output_loss(student(x), t, imgsz, loss).item()
                                  for x, t in zip(held, targets_held)]))

    before = held_loss()
    start = {n: (named[n].weight.detach().clone(), None if named[n].bias is None else named[n].bias.detach().clone())
             for n in grids}
    opt = torch.optim.Adam([{"params": params, "lr": lr}] +
                           ([{"params": list(log_steps.values()), "lr": STEP_LR}] if log_steps else []))
    rng = np.random.default_rng(0)
    budget, t0, steps, seen = steps, time.perf_counter(), 0, 0
    while (steps < budget) if budget else (time.perf_counter() - t0 < 60 * minutes):
        idx = rng.choice(len(train), min(BATCH, len(train)), replace=False)
        x = augment_batch(torch.cat([train[i] for i in idx]), augment, rng)
        with torch.no_grad():
            t = teacher(x)
        value = output_loss(student(x), t, imgsz, loss)
        done = steps / budget if budget else (time.perf_counter() - t0) / (60 * minutes)
        for group, rate in zip(opt.param_groups, (lr, STEP_LR)):
            group["lr"] = rate * lr_factor(done, schedule)
        opt.zero_grad()
        value.backward()
        opt.step()
        steps, seen = steps + 1, seen + len(idx)
        if steps % 20 == 0:
            spent = time.perf_counter() - t0
            left = f"{steps}/{budget} steps" if budget else f"{max(60 * minutes - spent, 0):.0f}s left"
            log(f"  distillation: step {steps}, training loss {value.item():.3g}, {left}")
    after = held_loss()
    kept = after < before
    out = {n: ((named[n].weight if kept else start[n][0]).detach().numpy().copy(),
               None if named[n].bias is None else (named[n].bias if kept else start[n][1]).detach().numpy().copy(),
               float(math.exp(-log_steps[n].item())) if kept and n in log_steps else float(grids[n].input_scale))
           for n in grids}
    moved = [out[n][2] / float(grids[n].input_scale) for n in log_steps]
    return out, {"steps": steps, "images_seen": seen, "held_out_loss_before": before, "held_out_loss_after": after,
                 "kept": kept, "train_images": len(train), "held_out_images": len(held),
                 "minutes": None if budget else minutes, "step_budget": budget or None,
                 "seconds": round(time.perf_counter() - t0, 1),
                 "lr": lr, "batch": BATCH, "augment": augment, "loss": loss, "schedule": schedule,
                 **({"learned_steps": len(moved), "step_lr": STEP_LR,
                     "input_scale_ratio": [round(min(moved), 3), round(max(moved), 3)]} if moved else {})}
