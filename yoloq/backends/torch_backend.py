"""PyTorch: the Ultralytics model itself, the reference every other variant is compared to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from yoloq.backends.base import Artifact, Backend, ExportContext, Style
from yoloq.backends.registry import register
from yoloq.errors import BackendUnavailable, HardwareMissing


class TorchRuntime:
    """The fused Ultralytics ``DetectionModel`` in eval mode."""

    def __init__(self, path: Path, threads: int, device: str, half: bool, end2end: bool = False,
                 max_det: int = 300) -> None:
        import torch
        from ultralytics import YOLO

        torch.set_num_threads(threads)
        self._torch, self.threads = torch, threads
        self.device = torch.device(device)
        model = YOLO(str(path)).model
        if getattr(model.model[-1], "one2one_cv2", None) is not None:  # type: ignore[index,union-attr]
            # as Ultralytics' validator: choose the branch before fusion drops the other one
            model.end2end = end2end  # type: ignore[union-attr]
            model.model[-1].max_det, model.model[-1].agnostic_nms = max_det, False  # type: ignore[index,union-attr]
        model = model.fuse(verbose=False).eval()  # type: ignore[union-attr]
        self.model = (model.half() if half else model.float()).to(self.device)
        self._dtype = torch.float16 if half else torch.float32
        self.info: dict[str, Any] = {"threads": torch.get_num_threads(), "device": str(self.device),
                                     "precision_ran": "fp16" if half else "fp32"}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on one NCHW batch."""
        torch = self._torch
        if torch.get_num_threads() != self.threads:  # the setting is the process's (and OpenMP's, per calling
            torch.set_num_threads(self.threads)  # thread): several runtimes with their own counts each set theirs
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, self._dtype)
            y = self.model(x)
            y = y[0] if isinstance(y, (list, tuple)) else y
            if isinstance(y, dict):  # end-to-end heads may return a dict of branches
                y = y.get("one2one", next(iter(y.values())))
                y = y[0] if isinstance(y, (list, tuple)) else y
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return y.float().cpu().numpy()


@register
class TorchBackend(Backend):
    """The source ``.pt`` run by PyTorch (CPU, or CUDA where a GPU is present)."""

    name = "torch"
    precisions = ("fp32", "fp16")
    devices = ("cpu", "cuda")
    sources = ("pt",)
    install_hint = "pip install torch"
    libraries = ("torch",)
    style = Style(color="#444444")

    def version(self) -> str:
        try:
            import torch
        except ImportError:
            raise BackendUnavailable(f"torch is not installed ({self.install_hint})") from None
        return torch.__version__

    def check(self, variant, source) -> None:  # noqa: ANN001 - see Backend.check
        super().check(variant, source)
        import torch

        if variant.device.startswith("cuda") and not torch.cuda.is_available():
            raise HardwareMissing(f"no CUDA device here for {variant.label} (needs an NVIDIA GPU and a CUDA build "
                                     f"of torch)")
        if variant.precision == "fp16" and not variant.device.startswith("cuda"):
            raise HardwareMissing("torch fp16 runs on CUDA only (set device: cuda:0)")

    def export(self, ctx: ExportContext) -> Artifact:
        return Artifact(ctx.source.path, self.name, ctx.variant.precision,
                        {"end2end": ctx.source.end2end, "max_det": ctx.max_det})

    def load(self, artifact: Artifact, threads: int, device: str = "cpu") -> TorchRuntime:
        return TorchRuntime(Path(artifact.path), threads, device, half=artifact.precision == "fp16",
                            end2end=bool(artifact.info.get("end2end")), max_det=int(artifact.info.get("max_det", 300)))

    def batched_runtime(self, artifact: Artifact, batch: int, threads: int, device: str = "cpu") -> TorchRuntime:
        """The model itself takes any batch."""
        return self.load(artifact, threads, device)
