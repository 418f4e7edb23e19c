"""The shared letterbox and postprocessing: a round trip returns the original boxes."""

import numpy as np
import pytest

from yoloq.config import EvalConfig
from yoloq.postprocess import postprocess, unletterbox
from yoloq.preprocess import PAD_VALUE, letterbox, prepare


@pytest.mark.parametrize("h, w", [(480, 640), (640, 480), (333, 500), (100, 90), (640, 640)])
def test_letterbox_round_trip(h, w):
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    out, lb = letterbox(img, 320)
    assert out.shape == (320, 320, 3)
    boxes = np.array([[0, 0, w, h], [w * 0.25, h * 0.1, w * 0.5, h * 0.9]], dtype=np.float32)
    to_input = boxes * lb.scale + np.array([lb.left, lb.top, lb.left, lb.top], dtype=np.float32)
    assert np.allclose(unletterbox(to_input, lb), boxes, atol=1e-3)
    # centred: the padding on both sides differs by at most one pixel, and is 114
    nw, nh = round(w * lb.scale), round(h * lb.scale)
    assert abs((320 - nw - lb.left) - lb.left) <= 1 and abs((320 - nh - lb.top) - lb.top) <= 1
    if lb.top:
        assert (out[0] == PAD_VALUE).all()
    if lb.left:
        assert (out[:, 0] == PAD_VALUE).all()


def test_prepare_is_rgb_nchw_unit_range():
    img = np.zeros((10, 20, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    x, _ = prepare([img], 32)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    assert x[0, 2, 16, 16] == 1.0 and x[0, 0, 16, 16] == 0.0  # blue is the last RGB channel
    assert x[0, 0, 0, 0] == pytest.approx(PAD_VALUE / 255)


def test_postprocess_decodes_nms_and_unletterboxes():
    _, lb = letterbox(np.zeros((240, 320, 3), np.uint8), 320)  # scale 1, pad 40 top/bottom
    raw = np.zeros((1, 4 + 3, 4), np.float32)
    # two overlapping boxes of class 1 (one suppressed), one box of class 2, one below conf
    raw[0, :4, 0] = [100, 100, 40, 40]
    raw[0, :4, 1] = [102, 101, 40, 40]
    raw[0, :4, 2] = [200, 150, 20, 60]
    raw[0, 5, 0], raw[0, 5, 1], raw[0, 6, 2], raw[0, 4, 3] = 0.9, 0.8, 0.7, 0.0005
    det = postprocess(raw, [lb], EvalConfig())[0]
    assert len(det) == 2
    order = np.argsort(-det.scores)
    assert det.classes[order].tolist() == [1, 2]
    assert np.allclose(det.boxes[order][0], [80, 40, 120, 80], atol=1e-4)  # y shifted by the 40 px pad


def test_nms_is_ultralytics_non_max_suppression_bit_for_bit_ties_included():
    import sys

    import torch
    from ultralytics.utils.nms import non_max_suppression

    from yoloq.config import EvalConfig
    from yoloq.postprocess import nms

    g = torch.Generator().manual_seed(0)
    n, nc = 3000, 6
    centres = torch.rand(2, 30, generator=g) * 600 + 20  # 30 objects, many overlapping candidates each
    pick = torch.randint(0, 30, (n,), generator=g)
    xy = centres[:, pick] + torch.randn(2, n, generator=g) * 4
    wh = torch.rand(2, 30, generator=g)[:, pick] * 150 + 10 + torch.randn(2, n, generator=g)
    scores = (torch.rand(nc, n, generator=g) * 1000).floor() / 1000  # coarse: many exact ties
    raw = torch.cat([xy, wh, scores])[None]
    import torchvision

    for cfg in (EvalConfig(conf=0.001, iou=0.7, max_det=300, multi_label=True),
                EvalConfig(conf=0.25, iou=0.7, max_det=300, multi_label=False),
                EvalConfig(conf=0.001, iou=0.5, max_det=100, multi_label=False)):
        sys.modules.pop("torchvision")  # Ultralytics' own NMS, as in a yoloq process (it checks sys.modules)
        try:
            ref = non_max_suppression(raw.clone(), conf_thres=cfg.conf, iou_thres=cfg.iou, multi_label=cfg.multi_label,
                                      max_det=cfg.max_det, max_time_img=60.0)[0]
        finally:
            sys.modules["torchvision"] = torchvision
        ours = nms(raw.clone(), cfg)[0]
        assert 0 < len(ours) <= cfg.max_det
        assert torch.equal(ours, ref)
        # torchvision's NMS on its own order breaks the ties differently: the test can tell
        assert not torch.equal(non_max_suppression(raw.clone(), conf_thres=cfg.conf, iou_thres=cfg.iou,
                                                   multi_label=cfg.multi_label, max_det=cfg.max_det)[0], ref)
