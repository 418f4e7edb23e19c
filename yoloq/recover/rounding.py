"""Learned rounding of convolution weights on a format's own int8 grid: GPTQ (Frantar et al. 2023) against the
FP32 layer's inputs.

For a layer with weights ``W`` [out, in*kh*kw] and input patches ``X`` (from the FP32 model on calibration images),
GPTQ rounds one input column at a time and folds each column's rounding error into the columns not yet rounded,
weighted by ``H = X^T X``, so that ``X W^T`` moves less than with rounding to nearest. The grid is the format's:
symmetric per output channel, ``q = round(w * scale)`` in ``[-qmax, qmax]``; the scales are the format's own, so
the integers drop into its file unchanged.
"""

from __future__ import annotations

import numpy as np

DAMP = 0.01  # GPTQ's dampening: 1% of the mean diagonal of H added to it


def gptq_integers(w: np.ndarray, h: np.ndarray, scales: np.ndarray, qmax: int,
                  rounder=np.round) -> np.ndarray:
    """GPTQ's integers for ``w`` ([out, in], float) on the grid ``q / scales`` (``scales`` [out], q in
    ``[-qmax, qmax]``), for inputs with second moments ``h`` ([in, in]); ``rounder`` is the format's rounding of a
    scaled weight (ties as the format breaks them)."""
    w = w.astype(np.float64)
    step = 1.0 / np.asarray(scales, np.float64)
    h = h.astype(np.float64).copy()
    dead = np.diag(h) == 0  # inputs that never carry a value: their weights cannot matter
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += DAMP * np.mean(np.diag(h))
    # the upper Cholesky factor of H^-1 (GPTQ's Hinv): row i holds the updates for the columns after i
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T
    work = w.copy()
    q = np.empty(w.shape, np.int32)
    for i in range(w.shape[1]):
        col = np.clip(rounder(work[:, i] / step), -qmax, qmax)
        q[:, i] = col
        err = (work[:, i] - col * step) / hinv[i, i]
        work[:, i + 1:] -= np.outer(err, hinv[i, i + 1:])
    return q


def patches_chw(x: np.ndarray, kernel: tuple[int, ...], rows: int | None = None,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """The input patches of a 2-D convolution over ``x`` ([C, H, W]) as rows [positions, C * kh * kw] in the
    weight order [out][in][kh][kw]; ``kernel`` = (kw, kh, stride w, h, dilation w, h, pad left, right, top, bottom).
    ``rows``: at most that many positions, drawn by ``rng`` (the second moments of a sample)."""
    kw, kh, sw, sh, dw, dh, pl, pr, pt, pb = kernel
    x = np.pad(x, ((0, 0), (pt, pb), (pl, pr)))
    win = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    win = win[:, ::sh, ::sw, ::dh, ::dw]  # [C, Ho, Wo, kh, kw]
    c, ho, wo = win.shape[:3]
    if rows is not None and ho * wo > rows:
        idx = (rng or np.random.default_rng(0)).choice(ho * wo, rows, replace=False)
        win = win.reshape(c, ho * wo, kh, kw)[:, idx]
        return win.transpose(1, 0, 2, 3).reshape(rows, c * kh * kw)
    return win.transpose(1, 2, 0, 3, 4).reshape(ho * wo, c * kh * kw)


def second_moments(cols: np.ndarray) -> np.ndarray:
    """``X^T X`` of patch rows, in float64."""
    c = cols.astype(np.float64)
    return c.T @ c
