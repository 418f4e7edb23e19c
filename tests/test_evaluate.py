"""The evaluator on hand-made ground truth: perfect predictions score AP 1.0, shifted boxes less."""

import numpy as np
import pytest

from yoloq.evaluate import STAT_NAMES, CocoEvaluator
from yoloq.postprocess import Detections

GT = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
               {"id": 2, "file_name": "b.jpg", "width": 640, "height": 480}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 100, 200], "area": 20000, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [300, 50, 120, 80], "area": 9600, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [50, 60, 200, 150], "area": 30000, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
}
CATS = (1, 3)  # model class 0 -> person (1), class 1 -> car (3)


def dets(boxes_xywh, classes, shift=0.0, scores=None):
    b = np.array(boxes_xywh, dtype=np.float32)
    xyxy = np.concatenate([b[:, :2] + shift, b[:, :2] + b[:, 2:] + shift], 1)
    s = np.full(len(b), 0.9, np.float32) if scores is None else np.array(scores, np.float32)
    return Detections(xyxy, s, np.array(classes))


def evaluate(shift=0.0, drop_second=False):
    ev = CocoEvaluator(GT, CATS)
    ev.process(1, dets([[10, 20, 100, 200], [300, 50, 120, 80]], [0, 1], shift))
    ev.process(2, dets([[50, 60, 200, 150]], [1], shift) if not drop_second else dets(np.zeros((0, 4)), []))
    return ev.evaluate()


def test_perfect_predictions_score_one():
    m = evaluate()
    assert m.map50_95 == pytest.approx(1.0)
    assert m.map50 == pytest.approx(1.0) and m.map75 == pytest.approx(1.0)
    assert m.per_class == {"person": pytest.approx(1.0), "car": pytest.approx(1.0)}
    assert m.images == 2 and m.detections == 3
    assert set(STAT_NAMES) <= set(m.to_dict())


def test_shifted_boxes_score_less():
    m = evaluate(shift=12.0)
    assert 0.0 < m.map50_95 < 0.9
    assert m.map50 == pytest.approx(1.0)  # still IoU > 0.5


def test_missed_object_lowers_recall_and_ap():
    m = evaluate(drop_second=True)
    assert m.per_class["car"] < 1.0 and m.per_class["person"] == pytest.approx(1.0)
    assert m.ar100 < 1.0


def test_class_map_and_no_predictions():
    ev = CocoEvaluator(GT, CATS)
    ev.process(1, dets([[10, 20, 100, 200]], [1]))  # right box, wrong class
    assert ev.evaluate().per_class["person"] == 0.0
    ev.reset()
    ev.process(1, dets(np.zeros((0, 4)), []))
    assert ev.evaluate().map50_95 == 0.0


def test_weighted_map_reproduces_cocoeval_and_counts_duplicates():
    from yoloq.bootstrap import paired_bootstrap, weighted_map

    # distinct scores: a resample repeats an image's detections next to each other, exact unless scores tie
    one = ([[10, 20, 100, 200], [300, 50, 120, 80]], [0, 1], 6.0, [0.9, 0.5])
    two = ([[50, 60, 200, 150], [400, 300, 50, 50]], [1, 1], 3.0, [0.7, 0.8])
    ev = CocoEvaluator(GT, CATS)
    ev.process(1, dets(*one))
    ev.process(2, dets(*two))
    m = ev.evaluate()
    pe = ev.per_image()
    assert weighted_map(pe, np.ones(2))[0] == pytest.approx(m.map50_95, abs=1e-12)
    # image 2 counted twice == a ground truth where image 2 appears twice
    gt2 = {**GT, "images": GT["images"] + [{"id": 3, "file_name": "c.jpg", "width": 640, "height": 480}],
           "annotations": GT["annotations"] + [{**GT["annotations"][2], "id": 4, "image_id": 3}]}
    ev2 = CocoEvaluator(gt2, CATS)
    ev2.process(1, dets(*one))
    for i in (2, 3):
        ev2.process(i, dets(*two))
    assert weighted_map(pe, np.array([1, 2]))[0] == pytest.approx(ev2.evaluate().map50_95, abs=1e-9)
    same = paired_bootstrap(pe, pe, n=200)
    assert same["lo"] == same["hi"] == same["drop"] == 0.0 and not same["significant"]


def test_resampled_maps_on_threads_equal_one_pass():
    from yoloq.bootstrap import resample_weights, resampled_maps, weighted_map

    ev = CocoEvaluator(GT, CATS)
    ev.process(1, dets([[10, 20, 100, 200], [300, 50, 120, 80]], [0, 1], 6.0, [0.9, 0.5]))
    ev.process(2, dets([[50, 60, 200, 150], [400, 300, 50, 50]], [1, 1], 3.0, [0.7, 0.8]))
    ev.evaluate()
    pe = ev.per_image()
    w = resample_weights(2, 300, seed=3)
    chunked = resampled_maps(pe, w, chunk=7)  # 43 chunks over the threads, order kept
    assert np.array_equal(chunked, weighted_map(pe, w))
    assert len(np.unique(chunked)) > 1  # the resamples differ, so order matters


def _dense_weighted_map(pe, weights):
    """The direct computation (every detection, dense cumulative sums): the oracle for the fast one."""
    w = np.atleast_2d(weights).astype(np.float64)
    b = w.shape[0]
    total, count = np.zeros(b), np.zeros(b)
    for k in range(len(pe.img)):
        npig = w @ pe.npos[k]
        valid = npig > 0
        if not valid.any():
            continue
        t, d = pe.tp[k].shape
        ap = np.zeros((b, t))
        for bi in range(b):
            for ti in range(t):
                dw = w[bi, pe.img[k]]
                tp, fp = np.cumsum(dw * pe.tp[k][ti]), np.cumsum(dw * pe.fp[k][ti])
                rc = tp / (npig[bi] if npig[bi] > 0 else 1)
                pr = tp / (fp + tp + np.spacing(1))
                pr = np.maximum.accumulate(pr[::-1])[::-1]
                inds = np.searchsorted(rc, pe.rec_thrs, side="left")
                ap[bi, ti] = np.where(inds < d, pr[np.minimum(inds, max(d - 1, 0))] if d else 0.0, 0.0).mean()
        total[valid] += ap[valid].mean(axis=1)
        count[valid] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def test_fast_weighted_map_is_bit_for_bit_the_dense_one_on_many_images():
    from yoloq.bootstrap import resample_weights, weighted_map

    rng = np.random.default_rng(0)
    n_img = 40
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(1, n_img + 1)]
    anns, per_image = [], {}
    for im in images:
        boxes = []
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 500), rng.uniform(0, 350)
            bw, bh = rng.uniform(10, 140), rng.uniform(10, 130)
            c = int(rng.integers(0, 2))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": CATS[c], "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
            boxes.append((x, y, bw, bh, c))
        per_image[im["id"]] = boxes
    gt = {**GT, "images": images, "annotations": anns}
    ev = CocoEvaluator(gt, CATS)
    scores = iter(rng.permutation(np.linspace(0.01, 0.99, 4000)))  # distinct scores
    for i, boxes in per_image.items():
        xyxy, cls = [], []
        for x, y, bw, bh, c in boxes:  # found, a little off, sometimes the wrong class
            j = rng.normal(0, 6, 4)
            xyxy.append([x + j[0], y + j[1], x + bw + j[2], y + bh + j[3]])
            cls.append(c if rng.random() > 0.1 else 1 - c)
        for _ in range(rng.integers(0, 8)):  # false positives
            x, y = rng.uniform(0, 560), rng.uniform(0, 400)
            xyxy.append([x, y, x + rng.uniform(5, 80), y + rng.uniform(5, 80)])
            cls.append(int(rng.integers(0, 2)))
        s = [next(scores) for _ in cls]
        b = np.asarray(xyxy, float).reshape(-1, 4)
        ev.process(i, Detections(b, np.asarray(s, np.float32), np.asarray(cls, np.int64)))
    m = ev.evaluate()
    pe = ev.per_image()
    assert weighted_map(pe, np.ones(n_img))[0] == pytest.approx(m.map50_95, abs=1e-12)
    w = resample_weights(n_img, 60, seed=1)
    assert np.array_equal(weighted_map(pe, w), _dense_weighted_map(pe, w))
