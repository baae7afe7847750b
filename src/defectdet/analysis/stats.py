"""Pure, vectorised statistics of a :class:`~defectdet.data.Catalog`.

Nothing here loops over boxes or images in Python: a catalogue with 100,000 images and 1,000,000
boxes is analysed in about a second. Loops run over classes or splits only (tens, not millions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from defectdet.data.catalog import Catalog

#: COCO size buckets, by box area in pixels at native resolution.
SMALL_AREA = 32.0**2
MEDIUM_AREA = 96.0**2
SIZE_BUCKETS = ("small", "medium", "large")


def box_table(catalog: Catalog) -> pd.DataFrame:
    """One row per box: ``row`` (its image's row in ``catalog.images``), ``class_id``, ``w``,
    ``h`` (px), ``rel_w``, ``rel_h`` (relative to the image), ``area`` and ``side`` (sqrt area).

    Boxes whose image is not in the catalogue (a broken invariant) are dropped, not mislabelled.
    """
    images, boxes = catalog.images, catalog.boxes
    rows = pd.Index(images["image_id"].to_numpy()).get_indexer(boxes["image_id"].to_numpy())
    keep = rows >= 0
    rows = rows[keep]
    w = (boxes["x2"].to_numpy(np.float64) - boxes["x1"].to_numpy(np.float64))[keep]
    h = (boxes["y2"].to_numpy(np.float64) - boxes["y1"].to_numpy(np.float64))[keep]
    img_w = images["width"].to_numpy(np.float64)[rows]
    img_h = images["height"].to_numpy(np.float64)[rows]
    area = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_w, rel_h = w / img_w, h / img_h
    return pd.DataFrame(
        {
            "row": rows.astype(np.int64),
            "class_id": boxes["class_id"].to_numpy(np.int64)[keep],
            "w": w,
            "h": h,
            "rel_w": rel_w,
            "rel_h": rel_h,
            "area": area,
            "side": np.sqrt(np.clip(area, 0.0, None)),
        }
    )


def instance_counts(class_id: np.ndarray, num_classes: int) -> np.ndarray:
    """Boxes per class."""
    return np.bincount(class_id, minlength=num_classes)[:num_classes].astype(np.int64)


def _unique_ints(values: np.ndarray, upper: int) -> np.ndarray:
    """Sorted unique values of a non-negative int array below ``upper``.

    A dense mark array when the range is modest (several times faster than np.unique on
    millions of values), a sort otherwise.
    """
    if upper <= max(1 << 24, 8 * len(values)):
        seen = np.zeros(upper, dtype=bool)
        seen[values] = True
        return np.flatnonzero(seen)
    v = np.sort(values)
    return v[np.r_[True, v[1:] != v[:-1]]]


def presence_pairs(
    rows: np.ndarray, class_id: np.ndarray, num_images: int, num_classes: int
) -> np.ndarray:
    """Unique (image row, class) pairs as an (M, 2) array: which class occurs in which image."""
    if len(rows) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    keys = _unique_ints(rows.astype(np.int64) * num_classes + class_id, num_images * num_classes)
    return np.stack([keys // num_classes, keys % num_classes], axis=1)


def image_counts(pairs: np.ndarray, num_classes: int) -> np.ndarray:
    """Images containing each class (from :func:`presence_pairs`)."""
    return np.bincount(pairs[:, 1], minlength=num_classes)[:num_classes].astype(np.int64)


@dataclass(frozen=True)
class Occurrence:
    """Where the boxes are, computed once and reused for the whole catalogue and each split."""

    num_images: int
    num_classes: int
    rows: np.ndarray  # image row of each box
    class_id: np.ndarray  # class of each box
    pairs: np.ndarray  # unique (image row, class) pairs
    per_image: np.ndarray  # boxes in each image row

    @classmethod
    def of(cls, table: pd.DataFrame, num_images: int, num_classes: int) -> Occurrence:
        rows, class_id = table["row"].to_numpy(), table["class_id"].to_numpy()
        pairs = presence_pairs(rows, class_id, num_images, num_classes)
        per_image = np.bincount(rows, minlength=num_images)
        return cls(num_images, num_classes, rows, class_id, pairs, per_image)


def imbalance_ratio(counts: np.ndarray) -> float | None:
    """Largest / smallest count over classes that occur at all; None with fewer than two."""
    present = np.asarray(counts)[np.asarray(counts) > 0]
    if len(present) < 2:
        return None
    return float(present.max() / present.min())


def objects_per_image(per_image: np.ndarray) -> dict[str, float | int | None]:
    """Boxes per image: mean and median over all images, max, and mean over defect images."""
    if len(per_image) == 0:
        return {"mean": None, "median": None, "max": None, "mean_over_defect_images": None}
    defect = per_image[per_image > 0]
    return {
        "mean": float(per_image.mean()),
        "median": float(np.median(per_image)),
        "max": int(per_image.max()),
        "mean_over_defect_images": float(defect.mean()) if len(defect) else 0.0,
    }


def size_bucket(area: np.ndarray) -> np.ndarray:
    """0 = small, 1 = medium, 2 = large (COCO thresholds)."""
    return np.digitize(area, [SMALL_AREA, MEDIUM_AREA], right=False).astype(np.int64)


def bucket_counts(area: np.ndarray, class_id: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, 3) counts of small / medium / large boxes per class."""
    flat = class_id * 3 + size_bucket(area)
    return np.bincount(flat, minlength=3 * num_classes)[: 3 * num_classes].reshape(-1, 3)


def class_medians(table: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """Median ``w``, ``h``, ``rel_w``, ``rel_h`` per class (index 0..K-1; NaN with no boxes)."""
    cols = ["w", "h", "rel_w", "rel_h"]
    med = table.groupby("class_id", sort=True)[cols].median()
    return med.reindex(pd.RangeIndex(num_classes))


def image_size_summary(images: pd.DataFrame) -> dict[str, int | float | None]:
    """Min / median / max width and height, and how many distinct (width, height) pairs."""
    keys = ("min_width", "median_width", "max_width", "min_height", "median_height", "max_height")
    if len(images) == 0:
        return dict.fromkeys(keys) | {"distinct": 0}
    w = images["width"].to_numpy(np.int64)
    h = images["height"].to_numpy(np.int64)
    distinct = len(np.unique(w * (int(h.max()) + 1) + h))
    values = (w.min(), np.median(w), w.max(), h.min(), np.median(h), h.max())
    out: dict[str, int | float | None] = {
        k: (float(v) if k.startswith("median") else int(v))
        for k, v in zip(keys, values, strict=True)
    }
    return out | {"distinct": int(distinct)}


def suggested_image_size(images: pd.DataFrame) -> int | None:
    """Median longer image side, rounded to a multiple of 32 (the coarsest usual stride), >= 64."""
    if len(images) == 0:
        return None
    longer = np.maximum(images["width"].to_numpy(), images["height"].to_numpy())
    return max(64, round(float(np.median(longer)) / 32.0) * 32)


def model_input_size(images: pd.DataFrame, image_size: int = 0, max_image_size: int = 1024) -> int:
    """The longest side fed to the model: ``image_size`` when given, else the data's
    :func:`suggested_image_size` (512 without images) capped at ``max_image_size``."""
    return image_size or min(suggested_image_size(images) or 512, max_image_size)


def size_histogram(
    side: np.ndarray, class_id: np.ndarray, num_classes: int, bins: int = 30
) -> dict[str, list]:
    """Histogram of box sides (sqrt area, px) per class on shared log-spaced bin edges."""
    positive = side > 0
    if not positive.any():
        return {"bin_edges": [], "counts": [[] for _ in range(num_classes)]}
    lo, hi = float(side[positive].min()), float(side[positive].max())
    if hi <= lo:  # all boxes the same size: give the single bar some width
        lo, hi = lo / 1.1, hi * 1.1
    edges = np.geomspace(lo, hi, bins + 1)
    idx = np.clip(np.searchsorted(edges, side[positive], side="right") - 1, 0, bins - 1)
    flat = class_id[positive] * bins + idx
    counts = np.bincount(flat, minlength=num_classes * bins)[: num_classes * bins]
    return {"bin_edges": edges.tolist(), "counts": counts.reshape(num_classes, bins).tolist()}


def repeat_epoch_images(pairs: np.ndarray, factors: np.ndarray, num_images: int) -> float:
    """Expected images per epoch under LVIS repeat-factor sampling.

    An image's factor is the largest factor of the classes it holds; background images keep 1.
    """
    per_image = np.ones(num_images, dtype=np.float64)
    if len(pairs):
        np.maximum.at(per_image, pairs[:, 0], factors[pairs[:, 1]])
    return float(per_image.sum())


def count_summary(
    occ: Occurrence, classes: list[str], image_mask: np.ndarray | None = None
) -> dict:
    """Headline counts: images, background images, boxes, and per class instances and images.

    ``image_mask`` (bool per image row) restricts the counts to some images, e.g. one split.
    """
    rows, class_id, pairs, per_image = occ.rows, occ.class_id, occ.pairs, occ.per_image
    if image_mask is not None:
        class_id = class_id[image_mask[rows]]
        pairs = pairs[image_mask[pairs[:, 0]]]
        per_image = per_image[image_mask]
    instances = instance_counts(class_id, occ.num_classes)
    images = image_counts(pairs, occ.num_classes)
    num_images = len(per_image)
    num_background = int(np.count_nonzero(per_image == 0))
    return {
        "num_images": num_images,
        "num_background_images": num_background,
        "background_share": num_background / num_images if num_images else None,
        "num_annotations": len(class_id),
        "classes": [
            {"name": name, "instances": int(n), "images": int(m)}
            for name, n, m in zip(classes, instances, images, strict=True)
        ],
    }
