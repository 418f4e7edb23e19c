"""Paired bootstrap confidence intervals for mAP differences, from pycocotools' per-image results.

``COCOeval.evaluate()`` already matched every detection to ground truth image by image. A resample
of images (with replacement) only changes how often each image counts, so mAP50-95 of a resample is
pycocotools' accumulate step with per-image weights: sort once, weighted cumulative sums, the same
101-point interpolated precision. No re-matching, no re-running COCOeval per resample.

Only true positives decide AP (see :class:`_Plan`), so a resample costs resamples x true positives, plus
one sparse product for the false positives' weights: 1,000 resamples of 500 COCO images take about
3 s on two cores, bit for bit the dense computation's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from yoloq.provenance import worker_threads


@dataclass(frozen=True)
class PerImageEval:
    """Per-category matched detections (area 'all', maxDets 100), ready for weighted AP.

    For category k: ``img[k]`` image index of each detection (sorted by score, pycocotools' order),
    ``tp[k]``/``fp[k]`` ``[T, D]`` booleans, ``npos[k]`` non-ignored ground truths per image.
    """

    image_ids: np.ndarray
    rec_thrs: np.ndarray
    img: tuple[np.ndarray, ...]
    tp: tuple[np.ndarray, ...]
    fp: tuple[np.ndarray, ...]
    npos: np.ndarray  # [K, n_images]

    def save(self, path: Path) -> None:
        """Store as one ``.npz``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {"image_ids": self.image_ids, "rec_thrs": self.rec_thrs, "npos": self.npos}
        for k in range(len(self.img)):
            arrays[f"img{k}"], arrays[f"tp{k}"], arrays[f"fp{k}"] = self.img[k], self.tp[k], self.fp[k]
        tmp = path.with_name(path.name + ".partial.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)

    def subset(self, image_ids: np.ndarray) -> PerImageEval:
        """The same matches on ``image_ids`` only (COCO matches each image on its own, so this is what evaluating
        those images alone gives)."""
        keep = np.isin(self.image_ids, image_ids)
        remap = np.cumsum(keep) - 1
        img, tp, fp = [], [], []
        for k in range(len(self.img)):
            m = keep[self.img[k]]
            img.append(remap[self.img[k][m]])
            tp.append(self.tp[k][:, m])
            fp.append(self.fp[k][:, m])
        return PerImageEval(self.image_ids[keep], self.rec_thrs, tuple(img), tuple(tp), tuple(fp), self.npos[:, keep])

    @classmethod
    def load(cls, path: Path) -> PerImageEval:
        """Read what :meth:`save` wrote."""
        z = np.load(path)
        k = z["npos"].shape[0]
        return cls(z["image_ids"], z["rec_thrs"], tuple(z[f"img{i}"] for i in range(k)),
                   tuple(z[f"tp{i}"] for i in range(k)), tuple(z[f"fp{i}"] for i in range(k)), z["npos"])


def collect(ev: Any) -> PerImageEval:
    """Extract per-image matches from an evaluated (``evaluate()`` called) ``COCOeval``."""
    p = ev.params
    image_ids = np.asarray(p.imgIds)
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    max_det = p.maxDets[-1]
    imgs, tps, fps, npos = [], [], [], np.zeros((len(p.catIds), n_img), dtype=np.int64)
    for k in range(len(p.catIds)):
        scores, idx, matches, ignores = [], [], [], []
        for i in range(n_img):
            e = ev.evalImgs[k * n_area * n_img + i]  # area index 0 = 'all'
            if e is None:
                continue
            d = np.asarray(e["dtScores"][:max_det])
            scores.append(d)
            idx.append(np.full(len(d), i, dtype=np.int32))
            matches.append(np.asarray(e["dtMatches"])[:, :max_det])
            ignores.append(np.asarray(e["dtIgnore"])[:, :max_det])
            npos[k, i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
        if not scores:
            t = len(p.iouThrs)
            imgs.append(np.zeros(0, np.int32))
            tps.append(np.zeros((t, 0), bool))
            fps.append(np.zeros((t, 0), bool))
            continue
        s = np.concatenate(scores)
        order = np.argsort(-s, kind="mergesort")  # pycocotools' order
        m, ig = np.concatenate(matches, 1)[:, order], np.concatenate(ignores, 1)[:, order]
        tp = np.logical_and(m > 0, ~ig.astype(bool))
        fp = np.logical_and(m == 0, ~ig.astype(bool))
        # detections after the last true positive never change AP (recall is flat, the precision envelope
        # only looks right): drop them, whatever the resample weights
        hits = np.nonzero(tp.any(axis=0))[0]
        end = int(hits[-1]) + 1 if hits.size else 0
        imgs.append(np.concatenate(idx)[order][:end])
        tps.append(tp[:, :end])
        fps.append(fp[:, :end])
    return PerImageEval(image_ids, np.asarray(p.recThrs), tuple(imgs), tuple(tps), tuple(fps), npos)


class _Plan:
    """``pe`` laid out for many weightings at once.

    Recall only rises at a true positive and precision only falls between two, so pycocotools' AP (first
    position reaching each recall threshold, precision envelope from the right) is decided at true
    positives alone; the false positives in front of each one matter only through their summed weight.
    Per category and IoU threshold, each true positive is a column: its image, and a sparse count of
    the false positives of each image since the previous one. Weights are integer counts, so every sum
    is exact in float64 and the result is bit for bit the dense computation's.
    """

    def __init__(self, pe: PerImageEval) -> None:
        import scipy.sparse as sparse

        self.pe = pe
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        self.blocks: list[list[tuple[int, int, np.ndarray]]] = []  # per category: (first column, n, tp images) per IoU
        col = 0
        for k in range(len(pe.img)):
            per_t = []
            for t in range(pe.tp[k].shape[0]):
                tp_pos, fp_pos = np.flatnonzero(pe.tp[k][t]), np.flatnonzero(pe.fp[k][t])
                seg = np.searchsorted(tp_pos, fp_pos, side="right")  # the true positive each false one precedes
                keep = seg < len(tp_pos)
                rows.append(pe.img[k][fp_pos[keep]])
                cols.append(col + seg[keep])
                per_t.append((col, len(tp_pos), pe.img[k][tp_pos]))
                col += len(tp_pos)
            self.blocks.append(per_t)
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        self.fp_counts = sparse.csr_matrix((np.ones(len(r)), (c, r)), shape=(col, pe.npos.shape[1]))
        self.columns = col

    def maps(self, weights: np.ndarray) -> np.ndarray:
        """mAP50-95 for each row of ``weights``."""
        pe = self.pe
        w = np.atleast_2d(weights).astype(np.float64)
        b, r = w.shape[0], len(pe.rec_thrs)
        fp_seg = np.asarray((self.fp_counts @ w.T).T)  # [B, columns]
        total, count = np.zeros(b), np.zeros(b)
        row_off = np.arange(b)[:, None]
        thr_idx = np.arange(1, r + 1)[None]
        for k, per_t in enumerate(self.blocks):
            npig = w @ pe.npos[k]  # [B]
            valid = npig > 0
            if not valid.any():
                continue
            safe = np.where(valid, npig, 1)[:, None]
            ap = np.zeros((b, len(per_t)))
            for t, (start, n, tp_img) in enumerate(per_t):
                if n == 0:
                    continue
                tp = np.cumsum(w[:, tp_img], axis=1)  # [B, n]
                fp = np.cumsum(fp_seg[:, start:start + n], axis=1)
                rc = tp / safe
                pr = tp / (fp + tp + np.spacing(1))
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
                # pycocotools: first j with rc[j] >= thr. bucket[j] = #thresholds <= rc[j] (exact float
                # compares), non-decreasing along a row; integer offsets allow one searchsorted for all rows.
                bucket = np.searchsorted(pe.rec_thrs, rc, side="right")
                off = (r + 2) * row_off
                inds = np.searchsorted((bucket + off).ravel(), (thr_idx + off).ravel(),
                                       side="left").reshape(b, r) - row_off * n
                q = np.where(inds < n, np.take_along_axis(pr, np.minimum(inds, n - 1), axis=1), 0.0)
                ap[:, t] = q.mean(axis=1)
            total[valid] += ap[valid].mean(axis=1)
            count[valid] += 1
        return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def weighted_map(pe: PerImageEval, weights: np.ndarray) -> np.ndarray:
    """mAP50-95 for each row of ``weights`` (``[B, n_images]`` image counts), like pycocotools.

    All-ones weights give exactly COCOeval's AP (area all, maxDets 100).
    """
    return _Plan(pe).maps(weights)


def resample_weights(n_images: int, n: int, seed: int) -> np.ndarray:
    """``[n, n_images]`` image counts of ``n`` bootstrap resamples (with replacement), seeded."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n_images, n_images), minlength=n_images) for _ in range(n)])


def resampled_maps(pe: PerImageEval, weights: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """mAP50-95 of ``pe`` under each resample (row of ``weights``), computed in chunks.

    Chunks (about 160 MB of work each) are independent and numpy releases the GIL in their sums and
    searches, so they run on threads, one per usable core (at most 4): the same numbers, in the same order.
    """
    from concurrent.futures import ThreadPoolExecutor

    plan = _Plan(pe)
    chunk = chunk or int(np.clip(2e7 // max(plan.columns, 1), 10, 250))
    starts = range(0, len(weights), chunk)
    workers = worker_threads()
    if workers < 2 or len(starts) < 2:
        return np.concatenate([plan.maps(weights[i:i + chunk]) for i in starts])
    with ThreadPoolExecutor(workers) as pool:
        return np.concatenate(list(pool.map(lambda i: plan.maps(weights[i:i + chunk]), starts)))


def interval(ref_maps: np.ndarray, var_maps: np.ndarray, drop: float, seed: int) -> dict[str, Any]:
    """The 2.5-97.5 percentile interval of paired differences, and whether it excludes zero."""
    lo, hi = (float(x) for x in np.percentile(ref_maps - var_maps, [2.5, 97.5]))
    return {"drop": drop, "lo": lo, "hi": hi, "resamples": len(ref_maps), "seed": seed,
            "significant": bool(lo > 0 or hi < 0)}


def paired_bootstrap(ref: PerImageEval, var: PerImageEval, n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The 95% interval of mAP50-95(ref) - mAP50-95(var) over image resamples shared by both.

    Raises:
        ValueError: When the two were evaluated on different images.
    """
    if not np.array_equal(ref.image_ids, var.image_ids):
        raise ValueError("paired bootstrap needs both variants evaluated on the same images")
    n_img = len(ref.image_ids)
    w = resample_weights(n_img, n, seed)
    ones = np.ones(n_img)
    drop = float(weighted_map(ref, ones)[0] - weighted_map(var, ones)[0])
    return interval(resampled_maps(ref, w), resampled_maps(var, w), drop, seed)
