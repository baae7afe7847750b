"""The in-memory catalogue of a detection dataset, shared by every subcommand.

Two pandas tables and a class list:

- ``images``: one row per image: ``image_id`` (int, unique), ``file_name`` (path relative to
  ``root``, POSIX separators), ``width``, ``height`` (pixels, as displayed), ``split`` (str; ``""``
  when the source has none).
- ``boxes``: one row per box: ``image_id``, ``class_id`` (index into ``classes``), ``x1``,
  ``y1``, ``x2``, ``y2`` (float pixels, ``x1 < x2``, ``y1 < y2``, inside the image).

Images without boxes (defect-free parts) are first-class rows of ``images``: they are counted,
split and trained on like every other image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from defectdet.data.problems import ProblemLog

IMAGE_COLUMNS = ["image_id", "file_name", "width", "height", "split"]
BOX_COLUMNS = ["image_id", "class_id", "x1", "y1", "x2", "y2"]


@dataclass
class Catalog:
    """A validated detection dataset. Build one with :func:`defectdet.data.load_dataset`."""

    root: Path
    classes: list[str]
    images: pd.DataFrame
    boxes: pd.DataFrame
    format: str = ""
    problems: ProblemLog = field(default_factory=ProblemLog)
    negatives: dict[str, list[int]] = field(default_factory=dict)  # --negatives folder -> ids

    # ----------------------------------------------------------------- basic facts
    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path_of(self, file_name: str) -> Path:
        return self.root / file_name

    def image_keys(self) -> list[str]:
        """Each image's resolved absolute path (catalogue order): the key that tells whether two
        catalogues, loaded from different annotation files or folders, share an image."""
        return [str(self.path_of(f).resolve()) for f in self.images["file_name"]]

    def splits(self) -> list[str]:
        """Split names present, in a conventional order (train, val, test, then others)."""
        present = [s for s in self.images["split"].unique() if s]
        order = {"train": 0, "trainval": 1, "val": 2, "valid": 2, "test": 3}
        return sorted(present, key=lambda s: (order.get(s, 9), s))

    def background_mask(self) -> np.ndarray:
        """Boolean per image row: True where the image has no boxes (defect-free)."""
        return ~self.images["image_id"].isin(self.boxes["image_id"]).to_numpy()

    def instance_counts(self) -> np.ndarray:
        """(num_classes,) int array: boxes of each class."""
        ids = self.boxes["class_id"].to_numpy(dtype=np.int64)
        return np.bincount(ids, minlength=self.num_classes)[: self.num_classes]

    def image_class_counts(self) -> np.ndarray:
        """(num_images, num_classes) int array: boxes of each class in each image (row order)."""
        row_of = pd.Series(np.arange(len(self.images)), index=self.images["image_id"].to_numpy())
        counts = np.zeros((len(self.images), len(self.classes)), dtype=np.int64)
        if len(self.boxes):
            rows = row_of.loc[self.boxes["image_id"].to_numpy()].to_numpy()
            np.add.at(counts, (rows, self.boxes["class_id"].to_numpy()), 1)
        return counts

    def boxes_by_image(self) -> dict[int, np.ndarray]:
        """image_id -> (N, 5) float array of x1, y1, x2, y2, class_id."""
        out: dict[int, np.ndarray] = {}
        cols = ["x1", "y1", "x2", "y2", "class_id"]
        for image_id, grp in self.boxes.groupby("image_id", sort=False):
            out[int(image_id)] = grp[cols].to_numpy(dtype=np.float64)
        return out

    # ----------------------------------------------------------------- derived catalogues
    def subset(self, image_ids) -> Catalog:
        """A catalogue holding only the given images (and their boxes)."""
        ids = pd.Index(image_ids)
        images = self.images[self.images["image_id"].isin(ids)].reset_index(drop=True)
        boxes = self.boxes[self.boxes["image_id"].isin(ids)].reset_index(drop=True)
        kept = set(images["image_id"].tolist())
        negatives = {f: [i for i in v if i in kept] for f, v in self.negatives.items()}
        return Catalog(
            self.root, list(self.classes), images, boxes, self.format, self.problems, negatives
        )

    def negative_ids(self) -> list[int]:
        """Ids of the images that came from ``--negatives`` folders."""
        return [i for ids in self.negatives.values() for i in ids]

    def split_subset(self, *names: str) -> Catalog:
        ids = self.images.loc[self.images["split"].isin(names), "image_id"]
        return self.subset(ids)

    def to_coco(self) -> dict:
        """The catalogue as a COCO detection dict (category ids 1..K in class order)."""
        images = [
            {
                "id": int(r.image_id),
                "file_name": r.file_name,
                "width": int(r.width),
                "height": int(r.height),
                **({"split": r.split} if r.split else {}),
            }
            for r in self.images.itertuples(index=False)
        ]
        b = self.boxes
        # Corners rounded to 0.01 px stay inside the (whole-pixel) image; a box narrower than
        # that keeps its exact corners, so that what is written reads back as the same box.
        exact = b[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64).reshape(-1, 4)
        xyxy = np.round(exact, 2)
        tiny = (xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1])
        xyxy[tiny] = exact[tiny]
        x, y = xyxy[:, 0], xyxy[:, 1]
        w, h = xyxy[:, 2] - x, xyxy[:, 3] - y
        w[~tiny], h[~tiny] = np.round(w[~tiny], 2), np.round(h[~tiny], 2)
        annotations = [
            {
                "id": i + 1,
                "image_id": int(img),
                "category_id": int(c) + 1,
                "bbox": [float(xx), float(yy), float(ww), float(hh)],
                "area": round(float(ww * hh), 2),
                "iscrowd": 0,
            }
            for i, (img, c, xx, yy, ww, hh) in enumerate(
                zip(b["image_id"], b["class_id"], x, y, w, h, strict=True)
            )
        ]
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.classes)]
        return {"images": images, "annotations": annotations, "categories": categories}
