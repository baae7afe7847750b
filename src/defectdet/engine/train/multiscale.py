"""Multi-scale training (``--multi-scale F``): each batch runs at a side drawn from
(1 ± F) × the input size in steps of 32 px, as YOLO-style recipes do, so the model sees defects
at more than one scale. Validation and inference stay at the input size."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

STRIDE = 32


def draw_side(size: int, spread: float, seed: int, step: int) -> int:
    """The side of batch ``step``: uniform over the multiples of 32 in (1 ± spread) × size
    (at least 32); the same on every DDP rank and on resume (seeded by ``seed`` and ``step``)."""
    low = max(STRIDE, int(np.ceil(size * (1 - spread) / STRIDE)) * STRIDE)
    high = max(low, int(size * (1 + spread) // STRIDE) * STRIDE)
    sides = np.arange(low, high + 1, STRIDE)
    return int(np.random.default_rng([seed, step, 31]).choice(sides))


def rescale_batch(
    batch: torch.Tensor, targets: list[dict[str, torch.Tensor]], side: int
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """(B, 3, S, S) images in 0..1 and their boxes -> (B, 3, side, side), boxes scaled alike
    (antialiased when shrinking, as the letterbox's INTER_AREA)."""
    size = batch.shape[-1]
    if side == size:
        return batch, targets
    out = F.interpolate(batch, size=(side, side), mode="bilinear", antialias=side < size)
    factor = side / size
    return out.clamp_(0, 1), [{**t, "boxes": t["boxes"] * factor} for t in targets]
