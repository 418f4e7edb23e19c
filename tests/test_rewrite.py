"""The exact rewrites (yoloq.rewrite): every YOLO family's raw output unchanged within float32's own rounding on a real
image, each rewrite counted where the family has its pattern, module names kept for scopes set by name; SiLU as
``x * sigmoid(x)`` (INT8 programs only) the same, replaced where used and never in the module Ultralytics shares."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest

from families import FAMILIES, build
from tolerance import rounding_tolerance

pytestmark = pytest.mark.shared

# the modules each rewrite changes, per family: the DFL (none in YOLO26), the two 2x upsamples, the blocks whose first
# convolution is split (C2f and C3k2, C2PSA; not YOLOv5u's C3, v9's ELAN blocks, v10's PSA)
EXPECTED = {"yolov5nu": (1, 2, 0), "yolov8n": (1, 2, 8), "yolov9t": (1, 2, 0), "yolov10n": (1, 2, 8),
            "yolo11n": (1, 2, 9), "yolo12n": (1, 2, 3), "yolo26n": (0, 2, 9)}


def _raw(model, x):
    import torch

    with torch.no_grad():
        y = model(x)
    return (y[0] if isinstance(y, (list, tuple)) else y).double().numpy()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rewrites_keep_every_familys_fp32_output(tmp_path, family):
    import torch
    from ultralytics import YOLO

    from yoloq.backends.torch_scope import export_module
    from yoloq.config import DataRef
    from yoloq.data import load_split
    from yoloq.paths import shared_root
    from yoloq.preprocess import prepare, read_image
    from yoloq.rewrite import INT8_REWRITES, REWRITES, apply

    model_dir = shared_root() / "models"
    pt = model_dir / "yolo11n.pt" if family == "yolo11n" else build(family, tmp_path, YOLO(
        str(model_dir / "yolo11n.pt")).names)
    source = SimpleNamespace(path=pt)
    before = export_module(source, 320, False, 300, "executorch")
    names_before = {n for n, _ in before.named_modules()}
    sample = load_split(DataRef("coco-mini", "val2017", max_images=1)).samples[0]
    x = torch.from_numpy(prepare([read_image(sample.path)], 320)[0])
    exact = _raw(copy.deepcopy(before).double(), x.double())
    a = _raw(before, x)
    after = copy.deepcopy(before)
    done = apply(after)
    b = _raw(after, x)
    assert tuple(done[r] for r in REWRITES) == EXPECTED[family], done
    assert a.shape == b.shape
    # boxes in input pixels, over every anchor; class scores as they are: the rounding of one float32 kernel
    np.testing.assert_allclose(b[:, :4], a[:, :4], rtol=1e-5, atol=rounding_tolerance(a[:, :4], exact[:, :4], 1e-3))
    np.testing.assert_allclose(b[:, 4:], a[:, 4:], rtol=0, atol=rounding_tolerance(a[:, 4:], exact[:, 4:], 1e-5))
    silu = copy.deepcopy(after)
    uses = sum(type(c) is torch.nn.SiLU for m in silu.modules() for c in m.children())
    assert apply(silu, INT8_REWRITES) == {"silu_as_product": uses} and uses > 0
    assert not any(type(m) is torch.nn.SiLU for m in silu.modules())
    c = _raw(silu, x)
    np.testing.assert_allclose(c[:, :4], a[:, :4], rtol=1e-5, atol=rounding_tolerance(a[:, :4], exact[:, :4], 1e-3))
    np.testing.assert_allclose(c[:, 4:], a[:, 4:], rtol=0, atol=rounding_tolerance(a[:, 4:], exact[:, 4:], 1e-5))
    assert type(export_module(source, 320, False, 300, "executorch").model[0].act) is torch.nn.SiLU  # not shared
    names_after = {n for n, _ in after.named_modules()}
    gone = {n.rsplit(".", 1)[0] for n in names_before - names_after if n.endswith(".cv1")}
    assert all(f"{m}.cv1a" in names_after and f"{m}.cv1b" in names_after for m in gone)
    assert not {n for n in names_after - names_before if not n.split(".")[-1].startswith(("cv1a", "cv1b"))
                and not any(p.startswith(("cv1a", "cv1b")) for p in n.split("."))}


def test_an_unknown_rewrite_is_named():
    from yoloq.rewrite import apply

    with pytest.raises(ValueError, match="unknown rewrite 'softmax'.*dfl_last_axis"):
        apply(SimpleNamespace(modules=lambda: []), ("softmax",))
