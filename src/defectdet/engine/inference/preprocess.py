"""Inference inputs: decode, letterbox (or tile) and batch images in DataLoader workers, with
:func:`defectdet.data.preprocess.letterbox`, the one preprocessing of every inference path.

``InferenceDataset[i]`` gives the tiles of image i as uint8 (n, 3, S, S) and an
:class:`ImageMeta` telling where they came from; :func:`collate` puts the tiles of a batch of
images into one tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from defectdet.data.dataset import make_loader
from defectdet.data.images import ImageError, load_rgb
from defectdet.data.preprocess import fit_scale, letterbox, tile_grid
from defectdet.engine.inference.sources import SourceImage


@dataclass
class ImageMeta:
    """One image of a batch. ``tiles`` rows of the batch tensor belong to it (0 if unreadable);
    ``offsets`` (tiles, 2) are their top-left corners (x0, y0) in original pixels; ``tile`` is
    their side in original pixels (0: the whole image, letterboxed)."""

    index: int
    name: str
    width: int
    height: int
    scale: float
    offsets: np.ndarray
    error: str | None = None
    image: np.ndarray | None = None  # (H, W, 3) RGB original, only when asked for
    tile: int = 0

    @property
    def tiles(self) -> int:
        return len(self.offsets)


class InferenceDataset(Dataset):
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
            crops = [
                letterbox(image[y : y + self.tile, x : x + self.tile], self.size, scale)
                for x, y in offsets
            ]
        else:
            scale = fit_scale(w, h, self.size)
            offsets = np.zeros((1, 2), dtype=np.int64)
            crops = [letterbox(image, self.size, scale)]
        tiles = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
        keep = image if self.keep_image else None
        meta = ImageMeta(
            index, src.name, w, h, scale, offsets.astype(np.float32), image=keep, tile=self.tile
        )
        return tiles, meta


def collate(batch: Sequence[tuple[torch.Tensor, ImageMeta]]) -> tuple[torch.Tensor, list]:
    """All tiles of the batch's images as one (N, 3, S, S) uint8 tensor, and the metas in order
    (image i owns the next ``metas[i].tiles`` rows)."""
    return torch.cat([t for t, _ in batch]), [m for _, m in batch]


def make_inference_loader(dataset: InferenceDataset, batch_size: int, workers: int) -> DataLoader:
    """Images in order, ``batch_size`` per batch, decoded by ``workers`` processes ahead of the
    model (0 = in the main process, < 0 = auto)."""
    return make_loader(dataset, None, batch_size, workers, train=False, collate_fn=collate)
