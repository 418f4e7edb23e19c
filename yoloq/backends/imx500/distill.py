"""Distillation for the IMX500: before MCT quantizes it, the FP32 model learns to live with the sensor's arithmetic.

The IMX500 loses to its 8-bit activations with power-of-two ranges spread over the network, which no choice of ranges
recovers (docs/edge.md): the weights have to learn them. Here the model is trained as :mod:`yoloq.recover.distill`
trains any format's student: the FP32 model the teacher, its raw head output on unlabelled calibration images the
target, the sensor's arithmetic in fake quantizers: each convolution's input at 8 bits with a power-of-two threshold
chosen as MCT chooses it (the least squared error among powers of two), its weights at 8 bits per output channel.
The learned float weights go back into an Ultralytics checkpoint of the same structure (each batch norm set to the
identity and the learned bias), which MCT then quantizes as it would the original: MCT keeps its own thresholds,
mixed precision and converter; what changed is weights that tolerate them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

BITS = 8
CANDIDATES = 4  # power-of-two thresholds tried: the one that clips nothing and the three below it
SAMPLE = 4096  # activation values per image and convolution input the threshold is chosen on (plus its largest)
AUGMENT = "flip-scale"  # more distinct inputs from the same images (on NCNN: 99.6% against 97.8% without, 600 steps)


def pow2_threshold(values: np.ndarray) -> float:
    """The power-of-two threshold of a signed 8-bit activation, chosen as MCT's ``mse`` error method chooses it:
    among the one that clips nothing and the :data:`CANDIDATES` - 1 below it, the one whose quantization of
    ``values`` has the least squared error."""
    top = float(np.abs(values).max()) or 1.0
    best: tuple[float, float] | None = None
    for k in range(math.ceil(math.log2(top)) - CANDIDATES + 1, math.ceil(math.log2(top)) + 1):
        t = 2.0 ** k
        d = t / 2 ** (BITS - 1)
        err = float(((np.clip(np.round(values / d), -2 ** (BITS - 1), 2 ** (BITS - 1) - 1) * d - values) ** 2).mean())
        if best is None or err < best[0]:
            best = (err, t)
    return best[1]  # type: ignore[index]


def student_layers(model: Any) -> list[str]:
    """The convolutions the sensor quantizes and distillation trains: all but the DFL's fixed projection (part of
    the box decode, which the IMX500 keeps at 16 bits)."""
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and ".dfl." not in f".{n}."]


def input_thresholds(model: Any, names: list[str], images: list[np.ndarray], seed: int = 0) -> dict[str, float]:
    """Each convolution's input threshold (:func:`pow2_threshold`) from the FP32 model's activations on ``images``."""
    import torch

    rng = np.random.default_rng(seed)
    seen: dict[str, list[np.ndarray]] = {n: [] for n in names}
    modules = dict(model.named_modules())

    def hook(name: str) -> Callable:
        def pre(_m: Any, args: tuple) -> None:
            v = args[0].detach().numpy().ravel()
            pick = rng.choice(v.size, min(SAMPLE, v.size), replace=False)
            seen[name].append(np.append(v[pick], v[np.abs(v).argmax()]))
        return pre

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for x in images:
                model(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    return {n: pow2_threshold(np.concatenate(v)) for n, v in seen.items()}


def sensor_grids(model: Any, images: list[np.ndarray]) -> dict[str, Any]:
    """The fake quantizers' arithmetic by module name: per-channel symmetric 8-bit weights on their largest
    magnitude, the input's power-of-two scale."""
    from yoloq.recover.distill import Grid

    names = student_layers(model)
    thresholds = input_thresholds(model, names, images)
    modules = dict(model.named_modules())
    top = 2 ** (BITS - 1) - 1
    grids = {}
    for n in names:
        w = modules[n].weight.detach().numpy()
        peak = np.abs(w).reshape(w.shape[0], -1).max(1)
        grids[n] = Grid(np.where(peak > 0, top / np.maximum(peak, 1e-12), 1.0).astype(np.float32), top,
                        2 ** (BITS - 1) / thresholds[n])
    return grids


def write_checkpoint(source: Path, learned: dict[str, tuple], out: Path) -> Path:
    """An Ultralytics checkpoint of ``source`` whose convolutions compute the learned (fused) weights and biases:
    each learned ``<block>.conv`` takes the weight, and the block's batch norm becomes the identity plus the learned
    bias (scale 1, mean 0, variance 1 - eps); a convolution without one takes its bias directly. Float32 throughout,
    so the learned values reach MCT unrounded."""
    import torch

    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    model = (ckpt.get("ema") or ckpt["model"]).float()
    modules = dict(model.named_modules())
    state = model.state_dict()
    for name, (w, b, *_) in learned.items():
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w))
        parent = name.rsplit(".", 1)[0]
        bn = modules.get(f"{parent}.bn") if name.endswith(".conv") else None
        bias = torch.from_numpy(np.ascontiguousarray(b)) if b is not None else None
        if bn is not None:
            state[f"{parent}.bn.weight"] = torch.ones_like(state[f"{parent}.bn.weight"])
            state[f"{parent}.bn.running_mean"] = torch.zeros_like(state[f"{parent}.bn.running_mean"])
            state[f"{parent}.bn.running_var"] = torch.full_like(state[f"{parent}.bn.running_var"], 1 - bn.eps)
            state[f"{parent}.bn.bias"] = bias if bias is not None else torch.zeros_like(state[f"{parent}.bn.bias"])
        elif bias is not None:
            state[f"{name}.bias"] = bias
    model.load_state_dict(state)
    ckpt["model"] = model
    if "ema" in ckpt:
        ckpt["ema"] = None
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    return out


def distill_for_sensor(source: Any, images: list[np.ndarray], imgsz: int, steps: int, threads: int, out: Path,
                       log: Callable[[str], None] = lambda s: None) -> tuple[Path, dict[str, Any]]:
    """Distil ``source`` (a :class:`yoloq.models.SourceModel`) through the IMX500's arithmetic for ``steps`` steps on
    ``images`` and write it as a checkpoint at ``out``; returns the checkpoint and what distillation reached."""
    from yoloq.backends.torch_scope import export_module
    from yoloq.recover.distill import distill

    model = export_module(source, imgsz, False, 300, "ncnn")  # the raw head output: boxes and scores, decoded
    grids = sensor_grids(model, images)
    learned, result = distill(model, grids, images, imgsz, 1.0, threads, log, steps=steps, augment=AUGMENT)
    return write_checkpoint(Path(source.path), learned, out), result | {"layers": len(grids)}
