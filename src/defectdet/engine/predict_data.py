"""Inputs for ``predict``: decode, letterbox (or tile) and batch images in DataLoader workers.

Every model input is a uint8 (3, S, S) tensor (S = the checkpoint's image size): the image (or
one tile of it) resized by ``scale`` and padded bottom/right with 0. A detection at ``(x, y)`` in
model pixels is at ``(x / scale + x0, y / scale + y0)`` in the original image, where
``(x0, y0)`` is the tile's top-left corner ((0, 0) without tiling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from defectdet.data.dataset import resolve_workers
from defectdet.data.images import ImageError, load_rgb
from defectdet.engine.sources import SourceImage


@dataclass
class ImageMeta:
    """One image of a batch. ``tiles`` rows of the batch tensor belong to it (0 if unreadable);
    ``offsets`` (tiles, 2) are their top-left corners (x0, y0) in original pixels."""

    index: int
    name: str
    width: int
    height: int
    scale: float
    offsets: np.ndarray
    error: str | None = None
    image: np.ndarray | None = None  # (H, W, 3) RGB original, only for --save-images

    @property
    def tiles(self) -> int:
        return len(self.offsets)


def letterbox(image: np.ndarray, size: int, scale: float) -> np.ndarray:
    """(h, w, 3) uint8 -> (size, size, 3): resized by ``scale`` (INTER_AREA when shrinking, it
    averages instead of skipping pixels; LINEAR when growing), padded bottom/right with 0."""
    h, w = image.shape[:2]
    nh, nw = min(size, round(h * scale)), min(size, round(w * scale))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (max(nw, 1), max(nh, 1)), interpolation=interp)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[: image.shape[0], : image.shape[1]] = image
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


class PredictDataset(Dataset):
    """``__getitem__(i)`` -> ``(tiles uint8 (n, 3, S, S), ImageMeta)``; an unreadable image gives
    ``n = 0`` and ``meta.error`` (reported by the caller, never raised in a worker).

    Args:
        sources: the inputs, in output order.
        image_size: S, the model's input side.
        tile: tile side in original pixels (0 = whole image, letterboxed).
        overlap: tile overlap fraction.
        keep_image: also return the decoded original (for drawing boxes on it).
    """

    def __init__(
        self,
        sources: Sequence[SourceImage],
        image_size: int,
        tile: int = 0,
        overlap: float = 0.2,
        keep_image: bool = False,
    ) -> None:
        self.sources, self.size = list(sources), int(image_size)
        self.tile, self.overlap, self.keep_image = int(tile), float(overlap), keep_image

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ImageMeta]:
        src = self.sources[index]
        try:
            image = load_rgb(src.path)
        except (ImageError, OSError, ValueError, cv2.error) as exc:
            meta = ImageMeta(index, src.name, 0, 0, 1.0, np.zeros((0, 2)), error=str(exc))
            return torch.zeros((0, 3, self.size, self.size), dtype=torch.uint8), meta
        h, w = image.shape[:2]
        if self.tile:
            scale = self.size / self.tile
            offsets = tile_grid(w, h, self.tile, self.overlap)
        else:
            scale = self.size / max(h, w)
            offsets = np.zeros((1, 2), dtype=np.int64)
        crops = [
            letterbox(
                image[y : y + self.tile, x : x + self.tile] if self.tile else image,
                self.size,
                scale,
            )
            for x, y in offsets
        ]
        tiles = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
        meta = ImageMeta(
            index,
            src.name,
            w,
            h,
            scale,
            offsets.astype(np.float32),
            image=image if self.keep_image else None,
        )
        return tiles, meta


def collate(batch: Sequence[tuple[torch.Tensor, ImageMeta]]) -> tuple[torch.Tensor, list]:
    """All tiles of the batch's images as one (N, 3, S, S) uint8 tensor, and the metas in order
    (image i owns the next ``metas[i].tiles`` rows)."""
    return torch.cat([t for t, _ in batch]), [m for _, m in batch]


def _worker_init(_worker_id: int) -> None:
    # Decoding workers stay single-threaded: the model already uses every core.
    cv2.setNumThreads(0)
    torch.set_num_threads(1)


def make_predict_loader(dataset: PredictDataset, batch_size: int, workers: int) -> DataLoader:
    """Images in order, ``batch_size`` per batch, decoded by ``workers`` processes ahead of the
    model (0 = in the main process, < 0 = auto)."""
    workers = resolve_workers(workers)
    kwargs: dict[str, Any] = (
        {"prefetch_factor": 2, "worker_init_fn": _worker_init} if workers else {}
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        **kwargs,
    )
