"""Stratified train/val split for datasets that come without one.

Multi-label stratification, the simple robust way: each image is keyed by the rarest class it
contains (background images form their own group), each group is split at the requested ratio,
then a repair pass moves images so that every class with at least two images appears on both
sides. Seeded and reproducible.
"""

from __future__ import annotations

import numpy as np

from defectdet.data.catalog import Catalog
from defectdet.errors import ConfigError


def stratified_split(
    catalog: Catalog, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Image ids of (train, val). Every class in ≥ 2 images is on both sides."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val fraction must be between 0 and 1, got {val_fraction}")
    counts = catalog.image_class_counts() > 0  # (num_images, K) presence
    n = len(counts)
    if n < 2:
        raise ConfigError("need at least 2 images to split into train and val")
    rng = np.random.default_rng(seed)
    key = _rarest_class(counts)
    is_val = np.zeros(n, dtype=bool)
    for group in np.unique(key):
        members = rng.permutation(np.flatnonzero(key == group))
        k = round(len(members) * val_fraction)
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        is_val[members[:k]] = True
    _repair(counts, is_val, rng)
    ids = catalog.images["image_id"].to_numpy()
    return ids[~is_val], ids[is_val]


def _rarest_class(presence: np.ndarray) -> np.ndarray:
    """Per image: index of its rarest class by image frequency, or -1 for background."""
    freq = presence.sum(axis=0).astype(float)
    masked = np.where(presence, freq[None, :], np.inf)
    key = masked.argmin(axis=1)
    return np.where(presence.any(axis=1), key, -1)


def _repair(presence: np.ndarray, is_val: np.ndarray, rng: np.random.Generator) -> None:
    """Move single images so no class with ≥ 2 images is missing from a side."""
    for c in np.argsort(presence.sum(axis=0)):  # rarest first: they have least slack
        holders = np.flatnonzero(presence[:, c])
        if len(holders) < 2:
            continue
        for side in (True, False):
            if not (is_val[holders] == side).any():
                # Take from the other side the holder whose move hurts other classes least.
                others = holders[is_val[holders] != side]
                cost = [_move_cost(presence, is_val, i) for i in others]
                best = others[int(np.argmin(cost))] if len(others) else None
                if best is not None:
                    is_val[best] = side


def _move_cost(presence: np.ndarray, is_val: np.ndarray, i: int) -> int:
    """Number of classes that would vanish from image i's current side if it moved."""
    side = is_val[i]
    same_side = presence[is_val == side]
    return int(((same_side.sum(axis=0) == 1) & presence[i]).sum())
