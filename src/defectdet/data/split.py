"""Stratified train/val split for datasets that come without one.

Multi-label stratification, the simple robust way: each image is keyed by the rarest class it
contains (background images form their own group), each group is split at the requested ratio,
then a repair pass moves images so that every class with at least two images appears on both
sides. Seeded and reproducible.

:func:`stratify` is the one implementation; it works on a class-presence matrix, so both
:func:`stratified_split` (a :class:`Catalog`) and ``defectdet synth`` (generated labels) use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from defectdet.errors import ConfigError

if TYPE_CHECKING:  # not imported at run time: synth uses this module without pandas
    from defectdet.data.catalog import Catalog


def stratified_split(
    catalog: Catalog, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Image ids of (train, val). Every class in ≥ 2 images is on both sides."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val fraction must be between 0 and 1, got {val_fraction}")
    presence = catalog.image_class_counts() > 0  # (num_images, K)
    if len(presence) < 2:
        raise ConfigError("need at least 2 images to split into train and val")
    is_val = stratify(presence, val_fraction, rng=np.random.default_rng(seed))
    ids = catalog.images["image_id"].to_numpy()
    return ids[~is_val], ids[is_val]


def stratify(
    presence: np.ndarray,
    val_fraction: float,
    rng: np.random.Generator | None = None,
    rarity: np.ndarray | None = None,
    force_repair: bool = True,
) -> np.ndarray:
    """Val flags (num_images,) bool for images given as a (num_images, K) class-presence matrix.

    Each image is keyed by its rarest class: the lowest ``rarity`` (default: the number of images
    holding the class; ties go to the lower class index), -1 for background. Each group sends
    ``round(n * val_fraction)`` of its ``n`` images to val, and, when ``0 < val_fraction < 1``
    and ``n >= 2``, at least one and at most ``n - 1``: a random choice with ``rng``, evenly
    spaced members (in row order) without.

    Then, when ``0 < val_fraction < 1``, a repair pass takes the classes rarest first and, for a
    class with ≥ 2 images missing from one side, moves one of its images there: the one whose
    move removes the fewest other classes from its side (the first such image in row order).
    ``force_repair=False`` makes only moves that remove no other class, and otherwise leaves the
    class on one side.
    """
    presence = np.asarray(presence, dtype=bool)
    if rarity is None:
        rarity = presence.sum(axis=0)
    split_each = 0 < val_fraction < 1
    key = _rarest_class(presence, rarity)
    is_val = np.zeros(len(presence), dtype=bool)
    for group in np.unique(key):
        members = np.flatnonzero(key == group)
        n = len(members)
        k = round(n * val_fraction)
        if split_each and n >= 2:
            k = min(max(k, 1), n - 1)
        if rng is not None:
            is_val[rng.permutation(members)[:k]] = True
        elif k > 0:
            is_val[members[((np.arange(k) + 0.5) * n / k).astype(np.int64)]] = True
    if split_each:
        _repair(presence, is_val, np.argsort(rarity), force_repair)
    return is_val


def _rarest_class(presence: np.ndarray, rarity: np.ndarray) -> np.ndarray:
    """Per image: index of its rarest class (lowest ``rarity``), or -1 for background."""
    if presence.shape[1] == 0:  # no classes: all background
        return np.full(len(presence), -1)
    score = np.asarray(rarity).astype(float)
    masked = np.where(presence, score[None, :], np.inf)
    key = masked.argmin(axis=1)
    return np.where(presence.any(axis=1), key, -1)


def _repair(presence: np.ndarray, is_val: np.ndarray, order: np.ndarray, force: bool) -> None:
    """Move single images so no class with ≥ 2 images is missing from a side (see stratify)."""
    for c in order:  # rarest first: they have least slack
        holders = np.flatnonzero(presence[:, c])
        if len(holders) < 2:
            continue
        for side in (True, False):
            if not (is_val[holders] == side).any():
                # Take from the other side the holder whose move hurts other classes least.
                cost = [_move_cost(presence, is_val, i) for i in holders]
                best = int(np.argmin(cost))
                if force or cost[best] == 0:
                    is_val[holders[best]] = side


def _move_cost(presence: np.ndarray, is_val: np.ndarray, i: int) -> int:
    """Number of classes that would vanish from image i's current side if it moved."""
    side = is_val[i]
    same_side = presence[is_val == side]
    return int(((same_side.sum(axis=0) == 1) & presence[i]).sum())
