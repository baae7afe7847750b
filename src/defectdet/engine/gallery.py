"""Galleries for review: contact sheets (PNG) of the detections and misses worth a look, each
tile a crop around one box with the ground truth and the prediction drawn in distinct styles,
and a CSV index of what every tile shows.

- ``evaluate --gallery DIR``: the top-K false alarms on good parts, the top-K missed defects
  per class (those nearest to being found first) and the wrong-class detections.
- ``predict --gallery DIR``: the highest-scoring detections per class and the good-looking
  images closest to the threshold.

Ground truth is drawn green with a thin line; predictions in their class colour with a thick
line and ``class score``. Shared by the two commands, with the box drawing of
``predict --save-images``.
"""

from __future__ import annotations

import csv
import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

from defectdet.console import warn
from defectdet.data.catalog import Catalog
from defectdet.data.images import ImageError, load_rgb
from defectdet.engine.inference.run import Detections
from defectdet.errors import ConfigError, OutputExistsError
from defectdet.io import atomic_open, ensure_dir

TILE = 160  # px, side of one tile
COLUMNS = 6
TRUTH_BGR = (60, 200, 60)
# Distinct BGR colours (tab10), one per class, cycling.
PALETTE = [
    (180, 119, 31),
    (14, 127, 255),
    (44, 160, 44),
    (40, 39, 214),
    (189, 103, 148),
    (75, 86, 140),
    (194, 119, 227),
    (127, 127, 127),
    (34, 189, 188),
    (207, 190, 23),
]


@dataclass
class GalleryItem:
    """One tile: ``priority`` orders tiles within a sheet (highest first)."""

    priority: float
    kind: str  # false_alarm | missed | wrong_class | top | borderline
    class_name: str
    path: Path
    name: str
    score: float | None
    box: tuple[float, float, float, float] | None  # the prediction, original pixels
    truth: tuple[float, float, float, float] | None = None  # the ground-truth box
    label: int = 0  # class index, for the colour


def draw_boxes(
    bgr: np.ndarray, boxes: np.ndarray, scores: np.ndarray, names: list[str], labels: np.ndarray
) -> np.ndarray:
    """Draw boxes with ``class score`` labels on ``bgr`` in place; line width follows the size."""
    side = max(bgr.shape[:2])
    thick = max(1, round(side / 400))
    font = max(0.35, side / 1600)
    for (x1, y1, x2, y2), s, name, c in zip(
        boxes.tolist(), scores.tolist(), names, labels.tolist(), strict=True
    ):
        color = PALETTE[int(c) % len(PALETTE)]
        p1, p2 = (round(x1), round(y1)), (round(x2), round(y2))
        cv2.rectangle(bgr, p1, p2, color, thick, cv2.LINE_AA)
        _label(bgr, f"{name} {s:.2f}", p1, color, font, thick)
    return bgr


def _label(bgr: np.ndarray, text: str, at: tuple[int, int], color, font: float, thick: int):
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
    top = at[1] - th - base if at[1] - th - base >= 0 else at[1]  # inside when at the top
    cv2.rectangle(bgr, (at[0], top), (at[0] + tw, top + th + base), color, -1)
    cv2.putText(
        bgr,
        text,
        (at[0], top + th),
        cv2.FONT_HERSHEY_SIMPLEX,
        font,
        (255, 255, 255),
        thick,
        cv2.LINE_AA,
    )


# ---------------------------------------------------------------------------- tiles
def _crop_window(box, width: int, height: int) -> tuple[int, int, int, int]:
    """A square window around ``box`` with context (three times its size, at least 48 px)."""
    x1, y1, x2, y2 = box
    side = max(48.0, 3 * max(x2 - x1, y2 - y1))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = int(np.clip(cx - side / 2, 0, max(width - side, 0)))
    top = int(np.clip(cy - side / 2, 0, max(height - side, 0)))
    return left, top, min(width, left + int(side)), min(height, top + int(side))


def render_tile(image: np.ndarray, item: GalleryItem, number: int) -> np.ndarray:
    """(TILE, TILE, 3) BGR: a crop around the item's box (the whole image when it has none),
    truth thin green, prediction thick in its class colour, caption below."""
    h, w = image.shape[:2]
    focus = item.box or item.truth
    x0, y0, x1, y1 = _crop_window(focus, w, h) if focus else (0, 0, w, h)
    crop = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2BGR)
    scale = (TILE - 18) / max(crop.shape[:2])
    crop = cv2.resize(
        crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    )
    tile = np.full((TILE, TILE, 3), 255, np.uint8)
    tile[: crop.shape[0], : crop.shape[1]] = crop

    def mapped(b):
        return (round((b[0] - x0) * scale), round((b[1] - y0) * scale)), (
            round((b[2] - x0) * scale),
            round((b[3] - y0) * scale),
        )

    if item.truth:
        cv2.rectangle(tile, *mapped(item.truth), TRUTH_BGR, 1, cv2.LINE_AA)
    if item.box:
        cv2.rectangle(tile, *mapped(item.box), PALETTE[item.label % len(PALETTE)], 2, cv2.LINE_AA)
    score = "" if item.score is None else f" {item.score:.2f}"
    caption = f"#{number} {item.class_name}{score}"  # the tile column of gallery.csv
    cv2.putText(
        tile, caption, (2, TILE - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA
    )
    return tile


def contact_sheet(tiles: list[np.ndarray], title: str) -> np.ndarray:
    """Tiles in rows of :data:`COLUMNS` under a title bar (BGR)."""
    rows = -(-len(tiles) // COLUMNS)
    sheet = np.full((28 + rows * (TILE + 4), COLUMNS * (TILE + 4), 3), 240, np.uint8)
    cv2.putText(sheet, title, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, COLUMNS)
        y, x = 28 + r * (TILE + 4), c * (TILE + 4)
        sheet[y : y + TILE, x : x + TILE] = tile
    return sheet


# ---------------------------------------------------------------------------- writing
SHEET_TITLES = {
    "false_alarm": "false alarms on good parts (highest scores first)",
    "missed": "missed {cls} (nearest to being found first; green: truth)",
    "wrong_class": "wrong-class detections (green: truth)",
    "top": "highest-scoring {cls} detections",
    "borderline": "good-looking images closest to the threshold",
}


def write_gallery(items: Iterable[GalleryItem], folder: Path) -> list[Path]:
    """One contact sheet per kind (per class for ``missed`` and ``top``) and ``gallery.csv``;
    returns the sheets written. Unreadable images are skipped with a warning."""
    ensure_dir(folder)
    groups: dict[str, list[GalleryItem]] = {}
    for item in items:
        key = f"{item.kind}_{item.class_name}" if item.kind in ("missed", "top") else item.kind
        groups.setdefault(key, []).append(item)
    rows, sheets = [], []
    for key, group in sorted(groups.items()):
        group.sort(key=lambda item: -item.priority)
        tiles = []
        for item in group:
            try:
                image = load_rgb(item.path)
            except ImageError as exc:
                warn(f"gallery: skipping {item.name}: {exc}")
                continue
            tiles.append(render_tile(image, item, len(tiles) + 1))
            box = item.box or item.truth or ("", "", "", "")
            rows.append(
                [
                    key + ".png",
                    len(tiles),
                    item.name,
                    item.kind,
                    item.class_name,
                    "" if item.score is None else round(item.score, 5),
                    *(round(v, 2) if v != "" else "" for v in box),
                ]
            )
        if not tiles:
            continue
        title = SHEET_TITLES[group[0].kind].format(cls=group[0].class_name)
        path = folder / f"{key}.png"
        ok, buf = cv2.imencode(".png", contact_sheet(tiles, title))
        if ok:
            with atomic_open(path, "wb") as fh:
                fh.write(buf.tobytes())
            sheets.append(path)
    with atomic_open(folder / "gallery.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["sheet", "tile", "file_name", "kind", "class", "score", "x1", "y1", "x2", "y2"]
        )
        writer.writerows(rows)
    return sheets


def check_gallery_folder(folder: Path, size: int, exist_ok: bool = False) -> None:
    """Refuse a gallery over an earlier one (``exist_ok`` replaces it) or a size below 1."""
    if size < 1:
        raise ConfigError(f"--gallery-size must be at least 1, got {size}")
    if (folder / "gallery.csv").exists() and not exist_ok:
        raise OutputExistsError(f"{folder} already holds a gallery; choose another --gallery")


class TopK:
    """The ``k`` items of highest priority seen so far (a bounded heap: memory stays flat)."""

    def __init__(self, k: int) -> None:
        self.k, self._heap, self._n = k, [], 0

    def push(self, item: GalleryItem) -> None:
        self._n += 1  # tie-breaker: items themselves need not compare
        entry = (item.priority, -self._n, item)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        elif entry > self._heap[0]:
            heapq.heapreplace(self._heap, entry)

    def items(self) -> list[GalleryItem]:
        return [e[2] for e in sorted(self._heap, reverse=True)]


# ---------------------------------------------------------------------------- choosing
def evaluation_items(
    catalog: Catalog, detections: list[Detections], thresholds: np.ndarray, k: int = 24
) -> list[GalleryItem]:
    """The false alarms on good parts, missed defects per class and wrong-class detections at
    ``thresholds`` (K,), at most ``k`` of each (per class for misses), worst first."""
    names = catalog.classes
    gts, by_id = catalog.boxes_by_image(), {d.image_id: d for d in detections}
    false_alarms, wrong = TopK(k), TopK(k)
    missed = {c: TopK(k) for c in names}
    for image_id, file_name in zip(
        catalog.images["image_id"], catalog.images["file_name"], strict=True
    ):
        d = by_id.get(int(image_id))
        gt = gts.get(int(image_id), np.zeros((0, 5)))
        path = catalog.path_of(file_name)

        def item(
            kind: str, label: int, score, box, truth=None, priority=None, path=path, name=file_name
        ) -> GalleryItem:
            weight = priority if priority is not None else (score or 0.0)
            return GalleryItem(
                weight, kind, names[label], path, name, score, _box(box), _box(truth), int(label)
            )

        if d is None:
            d = Detections(int(image_id), np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
        passed = d.passed(thresholds)
        iou = _ious(gt[:, :4], d.boxes)
        if not len(gt):
            for j in np.flatnonzero(passed):
                false_alarms.push(item("false_alarm", d.labels[j], float(d.scores[j]), d.boxes[j]))
            continue
        same = gt[:, 4:5].astype(int) == d.labels[None, :]  # (G, N)
        for g, (*truth, cls) in enumerate(gt.tolist()):
            hit = (iou[g] >= 0.5) & same[g]
            if (hit & passed).any():
                continue
            near = np.flatnonzero(hit)  # found below its threshold: nearest first
            j = near[d.scores[near].argmax()] if len(near) else None
            score = float(d.scores[j]) if j is not None else None
            box = d.boxes[j] if j is not None else None
            missed[names[int(cls)]].push(item("missed", int(cls), score, box, truth, score or 0.0))
        for j in np.flatnonzero(passed):
            overlaps = iou[:, j] >= 0.5
            if overlaps.any() and not (overlaps & same[:, j]).any():
                g = int(np.argmax(iou[:, j]))
                wrong.push(
                    item("wrong_class", d.labels[j], float(d.scores[j]), d.boxes[j], gt[g, :4])
                )
    out = false_alarms.items() + wrong.items()
    for top in missed.values():
        out += top.items()
    return out


def _box(b) -> tuple[float, float, float, float] | None:
    return None if b is None else tuple(float(v) for v in b)  # type: ignore[return-value]


def _ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return box_iou(
        torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    ).numpy()


class PredictionGallery:
    """Collects, while predict streams, the ``k`` highest-scoring detections per class and the
    ``k`` ok images whose best box came closest to its threshold (score / threshold)."""

    def __init__(self, class_names: list[str], k: int = 24) -> None:
        self.names = class_names
        self.top = {c: TopK(k) for c in class_names}
        self.borderline = TopK(k)

    def add(self, path: Path, name: str, det: Detections, thresholds: np.ndarray) -> None:
        passed = det.passed(thresholds)
        for j in np.flatnonzero(passed):
            c = int(det.labels[j])
            s = float(det.scores[j])
            self.top[self.names[c]].push(
                GalleryItem(s, "top", self.names[c], path, name, s, _box(det.boxes[j]), None, c)
            )
        if len(det.scores) and not passed.any():
            ratio = det.scores / thresholds[det.labels]
            j = int(ratio.argmax())
            c = int(det.labels[j])
            self.borderline.push(
                GalleryItem(
                    float(ratio[j]),
                    "borderline",
                    self.names[c],
                    path,
                    name,
                    float(det.scores[j]),
                    _box(det.boxes[j]),
                    None,
                    c,
                )
            )

    def items(self) -> list[GalleryItem]:
        return [i for t in self.top.values() for i in t.items()] + self.borderline.items()
