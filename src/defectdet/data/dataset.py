"""The torch Dataset for training and evaluation, its collate function and DataLoader factory.

Reproducibility: each item's randomness (copy-paste and albumentations) is seeded from
``(seed, epoch, row, copy)``, so results do not depend on the number of workers or on which
worker loads an item. ``copy`` comes from the index encoding of
:class:`~defectdet.data.sampling.EpochSampler` (repeated draws of an image get different
augmentations). The epoch lives in a shared-memory tensor, so ``set_epoch`` in the main process
reaches persistent workers too; call :func:`set_epoch` (sampler and dataset) before each epoch.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from defectdet.data.augment import CopyPaste
from defectdet.data.catalog import Catalog
from defectdet.data.images import ImageError, load_rgb
from defectdet.data.sampling import decode_index
from defectdet.errors import DataError

Target = dict[str, Any]


class BadImageWarning(UserWarning):
    """An image could not be read; another item was returned in its place."""


class DetectionDataset(Dataset):
    """Images of a catalogue, resized/padded to (S, S), with boxes and 0-based labels.

    ``__getitem__(i)`` returns ``(image, target)``: ``image`` is a float32 (3, S, S) tensor in
    [0, 1] (or uint8 (3, S, S) with ``uint8=True``: 4x less to move between processes and to
    the GPU; convert there with ``.float().div_(255)``), padded bottom/right with 0. ``target``:
    ``boxes`` float32 (N, 4) x1y1x2y2 in the resized image's pixels, ``labels`` int64 (N,),
    ``image_id`` int, ``orig_size`` (h, w), ``scale`` (= S / max(h, w), the resize factor).

    ``transforms`` is a pipeline from :func:`~defectdet.data.augment.build_transforms`;
    ``minority_transforms`` (optional) replaces it for images holding a class in
    ``rare_classes``; ``copy_paste`` (optional) runs before either.

    Unreadable images do not stop training: a :class:`BadImageWarning` is issued once per file
    (per process), the file is added to ``bad_files``, and the next readable row is returned.
    """

    def __init__(
        self,
        catalog: Catalog,
        image_size: int,
        transforms: A.Compose,
        minority_transforms: A.Compose | None = None,
        rare_classes: Sequence[int] = (),
        copy_paste: CopyPaste | None = None,
        seed: int = 0,
        uint8: bool = False,
    ) -> None:
        self.catalog, self.image_size = catalog, image_size
        self.transforms, self.minority_transforms = transforms, minority_transforms
        self.copy_paste, self.seed, self.uint8 = copy_paste, int(seed), uint8
        self.bad_files: set[str] = set()
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        images = catalog.images
        self._files = images["file_name"].tolist()
        self._ids = images["image_id"].astype(int).tolist()
        by_image = catalog.boxes_by_image()
        empty = np.zeros((0, 5))
        per_row = [by_image.get(i, empty) for i in self._ids]
        self._boxes = [b[:, :4].astype(np.float32) for b in per_row]
        self._labels = [b[:, 4].astype(np.int64) for b in per_row]
        rare = np.asarray(list(rare_classes), dtype=np.int64)
        self._has_rare = np.array([np.isin(lab, rare).any() for lab in self._labels], dtype=bool)

    def __len__(self) -> int:
        return len(self._files)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        row, copy = decode_index(index, len(self))
        for step in range(len(self)):
            r = (row + step) % len(self)
            try:
                image = load_rgb(self.catalog.path_of(self._files[r]))
            except ImageError as exc:
                self._report_bad(self._files[r], exc)
                continue
            return self._item(r, copy, image)
        raise DataError("no image of the dataset could be read")

    def _report_bad(self, file_name: str, exc: Exception) -> None:
        if file_name in self.bad_files:
            return
        self.bad_files.add(file_name)
        warnings.warn(
            f"skipping unreadable image {file_name}: {exc}", BadImageWarning, stacklevel=3
        )

    def _item(self, row: int, copy: int, image: np.ndarray) -> tuple[torch.Tensor, Target]:
        rng = np.random.default_rng([self.seed, self.epoch, row, copy])
        h, w = image.shape[:2]
        boxes, labels = self._boxes[row], self._labels[row]
        if self.copy_paste is not None:
            image, boxes, labels = self.copy_paste(image, boxes, labels, rng)
        use_minority = self.minority_transforms is not None and self._has_rare[row]
        pipeline = self.minority_transforms if use_minority else self.transforms
        pipeline.set_random_seed(int(rng.integers(2**31)))
        out = pipeline(image=image, bboxes=np.asarray(boxes).reshape(-1, 4), labels=labels)
        tensor = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1)
        if not self.uint8:
            tensor = tensor.float().div_(255)  # the one copy; the model normalises
        target = {
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1)),
            "image_id": self._ids[row],
            "orig_size": (h, w),
            "scale": self.image_size / max(h, w),
        }
        return tensor, target


def collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """``(images (B, 3, S, S), [target, ...])``; inside a worker the stack is written straight
    into shared memory (``default_collate``), saving a copy on the way to the main process."""
    images = torch.utils.data.default_collate([item[0] for item in batch])
    return images, [item[1] for item in batch]


def _worker_init(worker_id: int) -> None:
    # torch seeds each worker (base_seed + id); derive numpy/random from it, and keep OpenCV
    # single-threaded so workers do not oversubscribe the cores.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(0)
    torch.set_num_threads(1)  # decoding workers stay single-threaded: the model uses the cores


def resolve_workers(workers: int) -> int:
    """``workers < 0`` = auto. On a small CPU-only machine, worker processes compete with the
    model's threads for the same cores (measured: 1.5x slower inference with 2 workers on 2
    cores, docs/benchmarks.md), so auto uses none; with a GPU or many cores, decoding ahead
    in workers keeps the model fed."""
    if workers >= 0:
        return workers
    cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        return min(8, max(cores - 1, 1))
    return 0 if cores <= 4 else min(4, cores // 4)


def make_loader(
    dataset: Dataset,
    sampler: Sampler[int] | None,
    batch_size: int,
    workers: int,
    train: bool,
    collate_fn: Callable[[Sequence[Any]], Any] | None = None,
) -> DataLoader:
    """The DataLoader of every loop (training, validation, evaluate, predict). Without a
    sampler, ``train`` shuffles; ``workers < 0`` = auto (:func:`resolve_workers`); training
    keeps its workers across epochs, one-pass inference does not."""
    workers = resolve_workers(workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=train if sampler is None else False,
        num_workers=workers,
        collate_fn=collate_fn or collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
        persistent_workers=train and workers > 0,
        prefetch_factor=(4 if train else 2) if workers else None,
        worker_init_fn=_worker_init,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the loader's sampler and dataset the epoch (before iterating the loader)."""
    for obj in (loader.sampler, loader.dataset):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
