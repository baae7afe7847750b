"""Epoch samplers for imbalanced detection data: repeat-factor (LVIS), class-aware, undersampling.

An :class:`EpochSampler` builds each epoch's index list deterministically from ``(seed, epoch)``,
so every DDP rank builds the same list and takes its own shard, and a resumed run replays the
same epochs. Call :meth:`EpochSampler.set_epoch` before each epoch, like ``DistributedSampler``.

Index encoding: an image can appear several times in one epoch (repeat-factor, class-aware). So
that each copy gets its own augmentation, the sampler yields ``row + copy * num_images`` where
``copy`` counts earlier appearances of ``row`` in the epoch (0 for the first). ``DetectionDataset``
decodes this with :func:`decode_index`; pass ``encode_copies=False`` for plain row indices.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from defectdet.config import SamplerConfig, validate
from defectdet.data.repeat_factors import repeat_factors_per_image

# Tags that keep the random streams of the different per-epoch decisions independent.
_TAG_BACKGROUND, _TAG_MAJORITY, _TAG_DRAW, _TAG_SHUFFLE, _TAG_HARD = 1, 2, 3, 4, 5
HARD_FLOOR = 0.01
"""Added to every mined score: an image the model finds clean is still drawn now and then."""


def decode_index(index: int, num_images: int) -> tuple[int, int]:
    """``(row, copy)`` of an index yielded by :class:`EpochSampler`."""
    copy, row = divmod(int(index), num_images)
    return row, copy


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _copy_numbers(rows: np.ndarray) -> np.ndarray:
    """For each position, how many times its value appeared earlier in ``rows``."""
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_rows)) + 1] if len(rows) else np.zeros(0, int)
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    copies = np.empty_like(rows)
    copies[order] = np.arange(len(rows)) - group_start
    return copies


class EpochSampler(Sampler[int]):
    """Per-epoch index lists for imbalanced data; DDP-aware (every rank gets the same length).

    Args:
        image_class_counts: (num_images, K) boxes per class per image, in dataset row order
            (``Catalog.image_class_counts()``).
        cfg: sampler kind, repeat threshold and undersampling fractions.
        seed: the run seed; all ranks must pass the same one.
        rank, world_size: this process's DDP shard.
        shuffle: shuffle the epoch (False keeps row order, for evaluation).
        encode_copies: yield ``row + copy * num_images`` (see the module docstring).
    """

    def __init__(
        self,
        image_class_counts: np.ndarray,
        cfg: SamplerConfig,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        encode_copies: bool = True,
    ) -> None:
        counts = np.asarray(image_class_counts, dtype=np.int64)
        if counts.ndim != 2:
            raise ValueError(f"image_class_counts must be 2-D, got shape {counts.shape}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        validate(cfg)  # the option schema's ranges (one owner), for callers that skipped it
        self.counts, self.cfg, self.seed = counts, cfg, int(seed)
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.encode_copies = shuffle, encode_copies
        self.num_images = len(counts)

        present = counts > 0
        self._present = present
        self._is_background = ~present.any(axis=1)
        self._background = np.flatnonzero(self._is_background)
        self._majority_only = self._find_majority_only(present, counts)
        thinned = np.zeros(self.num_images, dtype=bool)
        thinned[self._background] = thinned[self._majority_only] = True
        self._always = np.flatnonzero(~thinned)
        self._factors = repeat_factors_per_image(counts, cfg.repeat_threshold)
        self.hardness: np.ndarray | None = None  # per row: best mined score (NaN: not mined)
        self.epoch = 0
        self.set_epoch(0)

    @staticmethod
    def _find_majority_only(present: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Rows whose only class is the most common class (by instances)."""
        if counts.shape[1] == 0 or counts.sum() == 0:
            return np.zeros(0, dtype=np.int64)
        majority = int(counts.sum(axis=0).argmax())
        return np.flatnonzero(present[:, majority] & (present.sum(axis=1) == 1))

    # ------------------------------------------------------------------ epoch construction
    def set_epoch(self, epoch: int) -> None:
        """Build (and cache) the index list of ``epoch``; call before iterating."""
        self.epoch = int(epoch)
        rows = self._epoch_rows(self.epoch)
        self.epoch_rows = rows  # full (unsharded) list of dataset rows for this epoch
        encoded = rows + _copy_numbers(rows) * self.num_images if self.encode_copies else rows
        self._indices = self._shard(encoded)

    def _keep(self, group: np.ndarray, fraction: float, tag: int) -> np.ndarray:
        """``ceil(fraction * n)`` members of ``group`` for this epoch, taking turns.

        Each cycle of ``ceil(n / k)`` epochs walks one random permutation of the group in windows
        of ``k`` (the last window wraps to the start), so every member appears in every cycle."""
        n = len(group)
        if fraction >= 1 or n == 0:
            return group
        k = math.ceil(fraction * n - 1e-9)
        if k <= 0:
            return group[:0]
        cycle, turn = divmod(self.epoch, math.ceil(n / k))
        perm = group[_rng(self.seed, tag, cycle).permutation(n)]
        return perm[np.arange(turn * k, turn * k + k) % n]

    def set_hardness(self, scores: np.ndarray | None) -> None:
        """Mined scores (per row; NaN where not mined); used from the next :meth:`set_epoch`."""
        self.hardness = None if scores is None else np.asarray(scores, dtype=np.float64).copy()

    def _kept_rows(self) -> np.ndarray:
        """Rows that survive undersampling this epoch (sorted; hard negatives may repeat)."""
        parts = [
            self._always,
            *self._background_rows(),
            self._keep(self._majority_only, self.cfg.undersample_majority, _TAG_MAJORITY),
        ]
        return np.sort(np.concatenate(parts)).astype(np.int64)

    def _background_rows(self) -> list[np.ndarray]:
        """This epoch's defect-free rows: a rotating ``background_fraction`` of them; with hard
        negatives mined, ``hard_fraction`` of those draws instead go, with replacement, to
        images in proportion to their mined score (plus :data:`HARD_FLOOR`)."""
        cfg, group = self.cfg, self._background
        mined = self.hardness is not None and cfg.hard_negatives and len(group)
        if not mined or cfg.hard_fraction <= 0:
            return [self._keep(group, cfg.background_fraction, _TAG_BACKGROUND)]
        total = math.ceil(cfg.background_fraction * len(group) - 1e-9)
        hard = round(cfg.hard_fraction * total)
        uniform = self._keep(group, (total - hard) / len(group), _TAG_BACKGROUND)
        weights = np.nan_to_num(self.hardness[group], nan=0.0) + HARD_FLOOR
        rng = _rng(self.seed, self.epoch, _TAG_HARD)
        return [uniform, rng.choice(group, size=hard, replace=True, p=weights / weights.sum())]

    def _epoch_rows(self, epoch: int) -> np.ndarray:
        kept = self._kept_rows()
        rng = _rng(self.seed, epoch, _TAG_DRAW)
        if self.cfg.sampler == "repeat-factor":
            factors = self._factors[kept]
            whole = np.floor(factors)
            reps = whole.astype(np.int64) + (rng.random(len(kept)) < factors - whole)
            rows = np.repeat(kept, reps)
        elif self.cfg.sampler == "class-aware":
            rows = self._class_aware(kept, rng)
        else:
            rows = kept
        if self.shuffle:
            rows = rows[_rng(self.seed, epoch, _TAG_SHUFFLE).permutation(len(rows))]
        return rows

    def _class_aware(self, kept: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Kept background images once each (so they keep their post-undersampling share of the
        epoch), plus one class-aware draw per kept foreground image: a class uniformly among
        classes with at least one kept image, then an image containing it uniformly."""
        background = kept[self._is_background[kept]]
        foreground = kept[~self._is_background[kept]]
        pools = [foreground[self._present[foreground, c]] for c in range(self.counts.shape[1])]
        pools = [p for p in pools if len(p)]
        if not pools:
            return kept
        chosen = rng.integers(len(pools), size=len(foreground))
        draws = np.empty(len(foreground), dtype=np.int64)
        for j, pool in enumerate(pools):
            sel = np.flatnonzero(chosen == j)
            draws[sel] = pool[rng.integers(len(pool), size=len(sel))]
        return np.concatenate([background, draws])

    def _shard(self, indices: np.ndarray) -> np.ndarray:
        """Pad to a multiple of world_size (repeating from the start), take every world_size-th."""
        if self.world_size == 1 or len(indices) == 0:
            return indices
        total = math.ceil(len(indices) / self.world_size) * self.world_size
        return np.resize(indices, total)[self.rank :: self.world_size]

    # ------------------------------------------------------------------ Sampler protocol
    def __iter__(self) -> Iterator[int]:
        return iter(self._indices.tolist())

    def __len__(self) -> int:
        return len(self._indices)

    @property
    def indices(self) -> np.ndarray:
        """This rank's (encoded) indices for the current epoch."""
        return self._indices

    def state_dict(self) -> dict[str, Any]:
        hardness = None if self.hardness is None else self.hardness.tolist()
        return {"epoch": self.epoch, "seed": self.seed, "hardness": hardness}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.set_hardness(state.get("hardness"))
        self.set_epoch(int(state["epoch"]))

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, Any]:
        """What sampling does to the class balance this epoch (whole epoch, all ranks).

        ``instances_*``/``share_*``: per class, boxes (and their share of all boxes) in the
        dataset and in the epoch, an image counted once per time it is sampled;
        ``background_*``/``images_*``: background-only images and all images, before/after."""
        rows = self.epoch_rows
        before = self.counts.sum(axis=0)
        after = self.counts[rows].sum(axis=0) if len(rows) else np.zeros_like(before)
        return {
            "epoch": self.epoch,
            "sampler": self.cfg.sampler,
            "images_before": self.num_images,
            "images_after": len(rows),
            "background_before": len(self._background),
            "background_after": int(self._is_background[rows].sum()),
            "instances_before": before.tolist(),
            "instances_after": after.tolist(),
            "share_before": (before / max(before.sum(), 1)).tolist(),
            "share_after": (after / max(after.sum(), 1)).tolist(),
        }
