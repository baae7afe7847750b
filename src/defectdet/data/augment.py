"""Box-aware augmentation (albumentations) and rare-class copy-paste.

Pipelines take and return pascal_voc boxes (x1, y1, x2, y2 pixels) with a ``labels`` field.
Every pipeline first resizes the longest side to ``image_size`` (so the augmentations run at
model resolution: cheaper for large industrial images, and noise/blur strengths mean the same
thing whatever the source resolution), then augments (train only), then pads bottom/right to a
square. Defects are orientation-agnostic by default, hence flips and 90-degree rotations.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np

from defectdet.config import AugmentConfig
from defectdet.data.catalog import Catalog
from defectdet.data.images import ImageError, load_rgb

PRESETS = ("none", "light", "medium", "heavy")


def _bbox_params(min_visibility: float = 0.3) -> A.BboxParams:
    # Boxes less visible than this after a transform are dropped, as are slivers under 4 px².
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_visibility=min_visibility,
        min_area=4,
        clip=True,
    )


DEFECT_TILES = 0.5
"""Share of training tiles (``--train-tile``) centred on a defect; the rest fall anywhere."""
TILE_MIN_VISIBILITY = 0.5
"""A box cut by a tile's edge is kept when at least this share of it is inside the tile."""


def _tile_crop(tile: int) -> list[A.BasicTransform]:
    """A ``tile`` px crop of the original (native resolution): padded first when the image is
    smaller, and centred on a random box for :data:`DEFECT_TILES` of the draws, so crops of a
    large image do not miss its few defects (a random crop when the image has none)."""
    pad = A.PadIfNeeded(
        tile, tile, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0
    )
    crop = A.OneOf(
        [
            A.AtLeastOneBBoxRandomCrop(tile, tile, p=DEFECT_TILES),
            A.RandomCrop(tile, tile, p=1 - DEFECT_TILES),
        ],
        p=1.0,
    )
    return [pad, crop]


def _augmentations(preset: str, rotate90: bool) -> list[A.BasicTransform]:
    """The train-time augmentations of a preset (shape-preserving, or rot90)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; choose one of {PRESETS}")
    if preset == "none":
        return []
    out: list[A.BasicTransform] = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if rotate90:
        out.append(A.RandomRotate90(p=1.0))  # with the flips: uniform over the 8 symmetries
    border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}
    if preset == "light":
        out.append(A.RandomBrightnessContrast(0.1, 0.1, p=0.5))
    elif preset == "medium":
        out += [
            A.Affine(scale=(0.8, 1.2), translate_percent=(-0.1, 0.1), p=0.5, **border),
            A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
            A.OneOf([A.GaussNoise(std_range=(0.02, 0.06)), A.GaussianBlur((3, 5))], p=0.3),
        ]
    else:  # heavy
        out += [
            A.Affine(
                scale=(0.7, 1.3),
                translate_percent=(-0.15, 0.15),
                rotate=(-10, 10),
                p=0.7,
                **border,
            ),
            A.RandomBrightnessContrast(0.3, 0.3, p=0.7),
            A.OneOf([A.CLAHE(clip_limit=2.0), A.Sharpen()], p=0.3),
            A.OneOf(
                [A.GaussNoise(std_range=(0.03, 0.1)), A.ISONoise(), A.GaussianBlur((3, 7))],
                p=0.5,
            ),
        ]
    return out


def _compose(augs: list[A.BasicTransform], image_size: int, tile: int = 0) -> A.Compose:
    return A.Compose(
        [
            *(_tile_crop(tile) if tile else []),
            # The resize rule of inference (data.preprocess.letterbox): INTER_AREA when
            # shrinking, linear when growing, so training sees the pixels inference will.
            A.LongestMaxSize(max_size=image_size, area_for_downscale="image"),
            *augs,
            A.PadIfNeeded(
                image_size,
                image_size,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
            ),
        ],
        bbox_params=_bbox_params(TILE_MIN_VISIBILITY if tile else 0.3),
    )


def build_transforms(cfg: AugmentConfig, image_size: int, train: bool, tile: int = 0) -> A.Compose:
    """Resize (longest side = ``image_size``), augment per ``cfg.augment`` if ``train``, pad to
    (image_size, image_size) top-left. Call as ``t(image=HxWx3 uint8, bboxes=(N,4), labels=(N,))``.
    ``tile`` (train only): first crop a ``tile`` px square of the original (:func:`_tile_crop`).
    """
    augs = _augmentations(cfg.augment, cfg.rotate90) if train else []
    return _compose(augs, image_size, tile if train else 0)


def build_minority_transforms(cfg: AugmentConfig, image_size: int, tile: int = 0) -> A.Compose:
    """The stronger pipeline for images holding a rare class: one preset above ``cfg.augment``,
    at least ``medium``."""
    level = min(max(PRESETS.index(cfg.augment) + 1, PRESETS.index("medium")), len(PRESETS) - 1)
    return _compose(_augmentations(PRESETS[level], cfg.rotate90), image_size, tile)


def find_rare_classes(instance_counts: Sequence[int] | np.ndarray) -> list[int]:
    """Classes with at least one box whose share of all boxes is below ``1 / (2K)``."""
    counts = np.asarray(instance_counts, dtype=np.float64)
    if counts.sum() == 0:
        return []
    share = counts / counts.sum()
    return [int(c) for c in np.flatnonzero((counts > 0) & (share < 1 / (2 * len(counts))))]


# ---------------------------------------------------------------------------- copy-paste
def _overlap_ok(rect: np.ndarray, boxes: np.ndarray) -> bool:
    """True if ``rect`` has IoU < 0.1 with every box and covers under half of each (so a small
    defect is never hidden under a paste)."""
    if len(boxes) == 0:
        return True
    ix = np.clip(np.minimum(rect[2], boxes[:, 2]) - np.maximum(rect[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(rect[3], boxes[:, 3]) - np.maximum(rect[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_r = (rect[2] - rect[0]) * (rect[3] - rect[1])
    iou = inter / np.maximum(area_r + area_b - inter, 1e-9)
    return bool(np.all(iou < 0.1) and np.all(inter < 0.5 * area_b))


def _feather_alpha(shape: tuple[int, int], box: np.ndarray, margin: int) -> np.ndarray:
    """(h, w) float32 alpha: 1 on the box, fading to ~0 across the margin (blurred rectangle)."""
    h, w = shape
    alpha = np.zeros((h, w), dtype=np.float32)
    x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
    x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    grow = margin // 2
    alpha[max(y1 - grow, 0) : y2 + grow, max(x1 - grow, 0) : x2 + grow] = 1.0
    if margin >= 2:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=max(margin / 4, 0.5))
    alpha[y1:y2, x1:x2] = 1.0  # the defect itself is pasted exactly
    return alpha


class CopyPaste:
    """Paste crops of rare-class defects onto training images (before the albumentations pipeline,
    so pasted objects are augmented with the rest of the image).

    With probability ``p`` it pastes 1..``max_pastes`` crops; each is a rare class chosen
    uniformly, then one of its boxes uniformly, cropped with a margin of ``margin`` x the box's
    longer side (at least 2 px). A position is accepted when the crop overlaps no existing or
    pasted box (IoU < 0.1 and covering under half of it); after ``tries`` rejections that paste
    is skipped. Crops are blended with a feathered alpha (defect exact, margin fading out). Source
    images are read lazily and kept in an LRU cache of ``cache_size`` images; unreadable sources
    are skipped. Crops larger than the target image are skipped.
    """

    def __init__(
        self,
        catalog: Catalog,
        rare_classes: Sequence[int],
        p: float = 0.5,
        max_pastes: int = 3,
        margin: float = 0.15,
        tries: int = 20,
        cache_size: int = 8,
    ) -> None:
        boxes = catalog.boxes[catalog.boxes["class_id"].isin(list(rare_classes))]
        file_of = dict(zip(catalog.images["image_id"], catalog.images["file_name"], strict=True))
        self.catalog = catalog
        self.p, self.max_pastes, self.margin, self.tries = p, max_pastes, margin, tries
        self._boxes = boxes[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
        self._labels = boxes["class_id"].to_numpy(dtype=np.int64)
        self._files = [file_of[int(i)] for i in boxes["image_id"]]
        self._by_class = [np.flatnonzero(self._labels == c) for c in np.unique(self._labels)]
        self._cache: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self._cache_size = cache_size

    def __getstate__(self) -> dict:
        # Workers start with an empty cache rather than receiving pixels through pickling.
        return self.__dict__ | {"_cache": OrderedDict()}

    def _source(self, file_name: str) -> np.ndarray | None:
        if file_name in self._cache:
            self._cache.move_to_end(file_name)
            return self._cache[file_name]
        try:
            image = load_rgb(self.catalog.path_of(file_name))
        except ImageError:
            image = None
        self._cache[file_name] = image
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return image

    def _crop(self, j: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(crop HxWx3, box in crop coordinates (4,), margin px) of source box ``j``."""
        source = self._source(self._files[j])
        if source is None:
            return None
        x1, y1, x2, y2 = self._boxes[j]
        margin = max(2, round(self.margin * max(x2 - x1, y2 - y1)))
        h, w = source.shape[:2]
        cx1, cy1 = max(int(np.floor(x1)) - margin, 0), max(int(np.floor(y1)) - margin, 0)
        cx2, cy2 = min(int(np.ceil(x2)) + margin, w), min(int(np.ceil(y2)) + margin, h)
        box = np.array([x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1])
        return source[cy1:cy2, cx1:cx2], box, margin

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(image, boxes (N+M, 4) float, labels (N+M,) int64)``; the input image is not
        modified (a copy is made when something is pasted)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if not self._by_class or rng.random() >= self.p:
            return image, boxes, labels
        out = image
        height, width = image.shape[:2]
        for _ in range(int(rng.integers(1, self.max_pastes + 1))):
            pool = self._by_class[int(rng.integers(len(self._by_class)))]
            j = int(pool[rng.integers(len(pool))])
            found = self._crop(j)
            if found is None:
                continue
            crop, box, margin = found
            ch, cw = crop.shape[:2]
            if ch > height or cw > width:
                continue
            for _ in range(self.tries):
                x, y = int(rng.integers(width - cw + 1)), int(rng.integers(height - ch + 1))
                if _overlap_ok(np.array([x, y, x + cw, y + ch], float), boxes):
                    break
            else:
                continue
            if out is image:
                out = image.copy()
            alpha = _feather_alpha((ch, cw), box, margin)[..., None]
            region = out[y : y + ch, x : x + cw].astype(np.float32)
            out[y : y + ch, x : x + cw] = np.rint(alpha * crop + (1 - alpha) * region).astype(
                np.uint8
            )
            boxes = np.vstack([boxes, box + np.array([x, y, x, y])])
            labels = np.append(labels, self._labels[j])
        return out, boxes, labels
