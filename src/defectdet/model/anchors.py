"""Anchor shapes: torchvision's defaults, and anchors fitted to the boxes (``--anchors auto``).

Each pyramid level ``l`` (stride ``2**l``) gets one base size ``s`` and, as in RetinaNet, three
scales ``s * 2**(0, 1/3, 2/3)`` times each aspect ratio (``h / w``, torchvision's convention):
``len(aspect_ratios) * 3`` anchors per location.

Fitting rule (``fit_anchor_sizes``), on box sizes ``sqrt(w * h)`` in model-input pixels:

* the lowest level's base is the 2nd percentile (so the smallest boxes still get an anchor),
  never below ``MIN_ANCHOR`` px;
* the highest level's largest scale (``base * 2**(2/3)``) reaches the 98th percentile;
* the levels in between are spread geometrically, each at least ``2**(1/3)`` times the one
  below (strictly increasing, and adjacent levels' scale sets still tile without gaps).

Industrial defects are often far smaller than COCO objects: torchvision's 32..512 px defaults
then give tiny boxes an IoU far under the 0.5 matching threshold with every anchor, and such a
box only trains through a single "low-quality" match. Boxes much smaller than a level's stride
are still hard to localise; use ``min_level=2`` for boxes under about 16 px.

``fit_aspect_ratios`` takes the 10th, 50th and 90th percentiles of ``h / w`` (geometric), spread
to at least a factor ``sqrt(2)`` around the median so the three ratios differ, clipped to
``[1/8, 8]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torchvision.models.detection.anchor_utils import AnchorGenerator

from defectdet.errors import ConfigError

SCALES_PER_LEVEL = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
MIN_ANCHOR = 4.0  # px; smaller anchors round to degenerate shapes
MIN_LEVEL_STEP = 2 ** (1 / 3)
MAX_RATIO = 8.0


def default_anchor_sizes(min_level: int, max_level: int) -> list[float]:
    """torchvision's base sizes: ``4 * 2**l`` for level ``l`` (P3 = 32 ... P7 = 512)."""
    return [4.0 * 2**level for level in range(min_level, max_level + 1)]


def make_anchor_generator(
    sizes: Sequence[float], aspect_ratios: Sequence[float]
) -> AnchorGenerator:
    """One ``AnchorGenerator`` entry per level: 3 scales of its base size x the aspect ratios."""
    per_level = tuple(tuple(float(s) * k for k in SCALES_PER_LEVEL) for s in sizes)
    ratios = (tuple(float(r) for r in aspect_ratios),) * len(per_level)
    return AnchorGenerator(per_level, ratios)


def _box_sizes(box_wh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid (finite, positive) boxes of an (N, 2) array: (w, h) as two (M,) arrays."""
    wh = np.asarray(box_wh, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(wh).all(axis=1) & (wh > 0).all(axis=1)
    if not ok.any():
        raise ConfigError(
            "cannot fit anchors: the training data has no boxes; use --anchors default"
        )
    return wh[ok, 0], wh[ok, 1]


def fit_anchor_sizes(box_wh: np.ndarray, min_level: int, max_level: int) -> list[float]:
    """Per-level base sizes covering the boxes' size distribution (rule in the module docstring).

    Args:
        box_wh: (N, 2) box widths and heights in model-input pixels.
        min_level, max_level: the pyramid levels the model uses.

    Returns:
        ``max_level - min_level + 1`` increasing sizes, rounded to 0.1 px.
    """
    w, h = _box_sizes(box_wh)
    size = np.sqrt(w * h)
    lo = max(MIN_ANCHOR, float(np.percentile(size, 2)))
    hi = max(lo, float(np.percentile(size, 98)) / SCALES_PER_LEVEL[-1])
    n = max_level - min_level + 1
    step = max(MIN_LEVEL_STEP, (hi / lo) ** (1 / (n - 1))) if n > 1 else 1.0
    return [round(lo * step**i, 1) for i in range(n)]


def fit_aspect_ratios(box_wh: np.ndarray) -> list[float]:
    """Three anchor aspect ratios (``h / w``) from the boxes' ratio distribution.

    Args:
        box_wh: (N, 2) box widths and heights (any consistent unit).
    """
    w, h = _box_sizes(box_wh)
    log_r = np.log(np.clip(h / w, 1 / MAX_RATIO, MAX_RATIO))
    q10, q50, q90 = np.percentile(log_r, [10, 50, 90])
    spread = math.log(2) / 2  # at least sqrt(2) between neighbours
    ratios = np.exp([min(q10, q50 - spread), q50, max(q90, q50 + spread)])
    return [round(float(r), 3) for r in np.clip(ratios, 1 / MAX_RATIO, MAX_RATIO)]


def anchor_shapes(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """(M, 2) anchor widths and heights, as ``AnchorGenerator`` makes them (before rounding)."""
    scales = np.array([s * k for s in sizes for k in SCALES_PER_LEVEL], dtype=np.float64)
    h_ratio = np.sqrt(np.asarray(aspect_ratios, dtype=np.float64))
    ws = (scales[None, :] / h_ratio[:, None]).ravel()
    hs = (scales[None, :] * h_ratio[:, None]).ravel()
    return np.stack([ws, hs], axis=1)


def best_shape_iou(box_wh: np.ndarray, anchor_wh: np.ndarray) -> np.ndarray:
    """(N,) best IoU of each box with any anchor, both centred at the same point.

    An upper bound on what matching can reach (real anchors also sit off-centre), and the usual
    yardstick for comparing anchor sets.
    """
    box = np.asarray(box_wh, dtype=np.float64).reshape(-1, 1, 2)
    anc = np.asarray(anchor_wh, dtype=np.float64).reshape(1, -1, 2)
    inter = np.minimum(box, anc).prod(axis=2)
    union = box.prod(axis=2) + anc.prod(axis=2) - inter
    return (inter / union).max(axis=1)
