"""DetectionDataset: tensors, scaled boxes, background images, bad files, collate, loader."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from defectdet.config import AugmentConfig, SamplerConfig
from defectdet.data.augment import CopyPaste, build_minority_transforms, build_transforms
from defectdet.data.catalog import Catalog
from defectdet.data.dataset import (
    BadImageWarning,
    DetectionDataset,
    collate,
    make_loader,
    set_epoch,
)
from defectdet.data.sampling import EpochSampler

S = 64


def make_catalog(tmp_path: Path, corrupt: bool = False) -> Catalog:
    """Three images: 96 x 48 with two boxes, 48 x 48 background, 64 x 80 (w x h) with one box."""
    sizes = {"wide.png": (96, 48), "bg.png": (48, 48), "tall.png": (64, 80)}
    for name, (w, h) in sizes.items():
        image = np.full((h, w, 3), 40, dtype=np.uint8)
        image[10:30, 20 : 60 if w > 60 else 40] = (250, 10, 10)
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if corrupt:
        (tmp_path / "wide.png").write_bytes(b"not an image at all")
    images = pd.DataFrame(
        {
            "image_id": [7, 8, 9],
            "file_name": list(sizes),
            "width": [96, 48, 64],
            "height": [48, 48, 80],
            "split": ["train"] * 3,
        }
    )
    boxes = pd.DataFrame(
        {
            "image_id": [7, 7, 9],
            "class_id": [0, 1, 1],
            "x1": [20.0, 60.0, 20.0],
            "y1": [10.0, 30.0, 10.0],
            "x2": [60.0, 90.0, 40.0],
            "y2": [30.0, 46.0, 30.0],
        }
    )
    return Catalog(tmp_path, ["dent", "scratch"], images, boxes)


def eval_dataset(catalog: Catalog, **kwargs) -> DetectionDataset:
    return DetectionDataset(catalog, S, build_transforms(AugmentConfig(), S, train=False), **kwargs)


def test_item_shapes_and_scaled_boxes(tmp_path: Path) -> None:
    ds = eval_dataset(make_catalog(tmp_path))
    assert len(ds) == 3
    image, target = ds[0]
    assert image.shape == (3, S, S) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image[:, 32:, :].abs().max() == 0  # 96 x 48 -> 64 x 32, padded below
    assert target["image_id"] == 7 and target["orig_size"] == (48, 96)
    assert target["scale"] == pytest.approx(S / 96)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    expected = torch.tensor([[20.0, 10.0, 60.0, 30.0], [60.0, 30.0, 90.0, 46.0]]) * (S / 96)
    torch.testing.assert_close(target["boxes"], expected)
    assert target["labels"].tolist() == [0, 1]
    # the red block lands where the box says
    x1, y1, x2, y2 = target["boxes"][0].round().int().tolist()
    assert image[0, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() > 0.9


def test_background_image_has_empty_targets(tmp_path: Path) -> None:
    _, target = eval_dataset(make_catalog(tmp_path))[1]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_uint8_option(tmp_path: Path) -> None:
    image, _ = eval_dataset(make_catalog(tmp_path), uint8=True)[2]
    assert image.dtype == torch.uint8 and image.shape == (3, S, S)


def test_corrupt_image_is_skipped_with_one_warning(tmp_path: Path) -> None:
    ds = eval_dataset(make_catalog(tmp_path, corrupt=True))
    with pytest.warns(BadImageWarning, match="wide.png"):
        _, target = ds[0]
    assert target["image_id"] == 8  # the next row instead
    assert ds.bad_files == {"wide.png"}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", BadImageWarning)
        ds[0]  # warned once per file only


def test_augmentation_is_reproducible_per_epoch_and_copy(tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path)
    cfg = AugmentConfig(augment="heavy", copy_paste=1.0)
    ds = DetectionDataset(
        catalog,
        S,
        build_transforms(cfg, S, train=True),
        minority_transforms=build_minority_transforms(cfg, S),
        rare_classes=[1],
        copy_paste=CopyPaste(catalog, [1], p=1.0),
        seed=3,
    )
    first = ds[2]
    torch.testing.assert_close(ds[2][0], first[0])
    copy = ds[2 + len(ds)]  # the same image, drawn a second time this epoch
    ds.set_epoch(1)
    later = ds[2]
    # A second draw in the epoch and the next epoch both get their own augmentation.
    assert not torch.equal(copy[0], first[0]) and not torch.equal(later[0], first[0])
    for _, target in (first, copy, later):
        boxes = target["boxes"]
        assert boxes.shape[0] == target["labels"].shape[0] > 0
        assert 1 in target["labels"].tolist()  # copy-paste (p=1) pasted the rare class
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= S).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_collate(tmp_path: Path) -> None:
    ds = eval_dataset(make_catalog(tmp_path))
    images, targets = collate([ds[0], ds[1], ds[2]])
    assert images.shape == (3, 3, S, S) and images.is_contiguous()
    assert [t["image_id"] for t in targets] == [7, 8, 9]


def test_loader_with_epoch_sampler(tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path)
    ds = DetectionDataset(catalog, S, build_transforms(AugmentConfig(), S, train=True), seed=1)
    cfg = SamplerConfig(sampler="repeat-factor", repeat_threshold=0.9)
    sampler = EpochSampler(catalog.image_class_counts(), cfg, seed=1)
    loader = make_loader(ds, sampler, batch_size=2, workers=0, train=True)
    for epoch in range(2):
        set_epoch(loader, epoch)
        assert ds.epoch == epoch and sampler.epoch == epoch
        seen = []
        for images, targets in loader:
            assert images.shape[1:] == (3, S, S) and images.shape[0] == len(targets)
            seen += [t["image_id"] for t in targets]
        assert len(seen) == len(sampler)
        assert sorted(seen) == sorted(catalog.images["image_id"].iloc[sampler.epoch_rows])


def test_persistent_workers_match_single_process(tmp_path: Path) -> None:
    """The epoch reaches persistent workers; results do not depend on the worker count."""
    catalog = make_catalog(tmp_path)
    cfg = SamplerConfig(sampler="repeat-factor", repeat_threshold=0.9)

    def run(workers: int) -> list[torch.Tensor]:
        transforms = build_transforms(AugmentConfig(augment="heavy"), S, train=True)
        ds = DetectionDataset(catalog, S, transforms, seed=1)
        sampler = EpochSampler(catalog.image_class_counts(), cfg, seed=1)
        loader = make_loader(ds, sampler, batch_size=2, workers=workers, train=True)
        out = []
        for epoch in range(2):
            set_epoch(loader, epoch)
            out.append(torch.cat([images for images, _ in loader]))
        return out

    single, multi = run(0), run(2)
    assert all(torch.equal(a, b) for a, b in zip(single, multi, strict=True))
