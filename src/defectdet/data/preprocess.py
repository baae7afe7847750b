"""The one preprocessing of inference: every model input is a uint8 (S, S, 3) image (S = the
model's input side), the image (or one tile of it) resized by ``scale`` and padded bottom/right
with 0. Train-time validation, ``evaluate``, ``predict``, tiling and the export check all call
:func:`letterbox`; training resizes with the same rule (:mod:`defectdet.data.augment`).

Resizing uses OpenCV's INTER_AREA when shrinking (it averages instead of skipping pixels) and
INTER_LINEAR when growing. A detection at ``(x, y)`` in model pixels is at
``(x / scale + x0, y / scale + y0)`` in the original image, where ``(x0, y0)`` is the tile's
top-left corner ((0, 0) without tiling): see :func:`to_original`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def fit_scale(width: int, height: int, size: int) -> float:
    """The resize factor that brings the longest side to ``size``."""
    return size / max(width, height)


def letterbox(image: np.ndarray, size: int, scale: float | None = None) -> np.ndarray:
    """(h, w, 3) uint8 -> (size, size, 3) uint8: resized by ``scale`` (default: longest side to
    ``size``), padded bottom/right with 0."""
    h, w = image.shape[:2]
    scale = fit_scale(w, h, size) if scale is None else scale
    nh, nw = min(size, round(h * scale)), min(size, round(w * scale))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (max(nw, 1), max(nh, 1)), interpolation=interp)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[: image.shape[0], : image.shape[1]] = image
    return out


def to_original(
    boxes: np.ndarray, scale: float, offset: tuple[float, float], width: int, height: int
) -> np.ndarray:
    """(N, 4) xyxy boxes in model pixels -> original image pixels, clipped to the image."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / scale
    out[:, 0::2] = (out[:, 0::2] + offset[0]).clip(0, width)
    out[:, 1::2] = (out[:, 1::2] + offset[1]).clip(0, height)
    return out


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start coordinates covering ``0..length`` with tiles of ``tile`` px overlapping by at
    least ``overlap`` (fraction); the last tile ends exactly at ``length``."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(n)})


def tile_grid(width: int, height: int, tile: int, overlap: float) -> np.ndarray:
    """(N, 2) int top-left corners (x0, y0), row-major."""
    xs, ys = tile_starts(width, tile, overlap), tile_starts(height, tile, overlap)
    return np.array([(x, y) for y in ys for x in xs], dtype=np.int64).reshape(-1, 2)
