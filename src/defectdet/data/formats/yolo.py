"""YOLO txt: ``images/`` and ``labels/`` trees with ``data.yaml`` (or ``classes.txt``).

Each label line is ``class cx cy w h`` normalised to the image size (a longer line is a YOLO
segmentation polygon; its bounding box is used). Image sizes come from image headers only.
An image without a label file, or with an empty one, is a defect-free image. The split is the
folder under ``images/`` (``images/train/...``) when it is a split name.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np
import yaml

from defectdet.config import safe_yaml
from defectdet.data.images import is_image_file, read_size
from defectdet.data.problems import ProblemLog
from defectdet.data.validate import raw_boxes, raw_images
from defectdet.errors import DataError

_SPLITS = {"train": "train", "val": "val", "valid": "val", "test": "test", "trainval": "trainval"}


def is_yolo(root: Path) -> bool:
    has_yaml = any((root / n).is_file() for n in ("data.yaml", "dataset.yaml", "classes.txt"))
    return (root / "labels").is_dir() and ((root / "images").is_dir() or has_yaml)


def read_classes(root: Path) -> list[str]:
    for name in ("data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            return _yaml_names(root / name)
    if (root / "classes.txt").is_file():
        try:
            text = (root / "classes.txt").read_text(encoding="utf-8")
        except OSError as exc:
            raise DataError(f"{root / 'classes.txt'}: cannot read ({exc.strerror or exc})") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{root / 'classes.txt'}: not a UTF-8 text file ({exc})") from exc
        names = [line.strip() for line in text.splitlines() if line.strip()]
        return _unique(root / "classes.txt", names)
    raise DataError(f"{root}: YOLO data needs data.yaml (with 'names') or classes.txt")


def _yaml_names(path: Path) -> list[str]:
    try:
        data = safe_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid YAML ({exc})") from exc
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        if sorted(names) != list(range(len(names))):  # label lines index the list
            raise DataError(
                f"{path}: 'names' ids must be 0..{len(names) - 1}, got {sorted(names)[:10]}"
            )
        names = [names[k] for k in sorted(names)]
    if isinstance(names, list) and names and all(isinstance(n, str | int) for n in names):
        return _unique(path, [str(n) for n in names])
    raise DataError(f"{path}: 'names' must be a list of class names or a mapping id → name")


def _unique(path: Path, names: list[str]) -> list[str]:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path}: class names used twice: {', '.join(duplicates)}")
    if not names:
        raise DataError(f"{path}: no class names")
    return names


def read_yolo(root: Path, problems: ProblemLog):
    """Returns (classes, raw images, raw boxes)."""
    classes = read_classes(root)
    image_paths = _image_files(root)
    if not image_paths:
        raise DataError(f"{root}: no images found under images/")
    imgs: dict[str, list] = defaultdict(list)
    boxes: dict[str, list] = defaultdict(list)
    for rel in image_paths:
        label = root / _label_path(rel)
        try:
            w, h = read_size(root / rel)
        except DataError as exc:
            problems.add(str(root / rel), str(exc).split(": ", 1)[-1], kind="unreadable-image")
            continue
        _add(
            imgs,
            key=rel,
            file_name=rel,
            width=w,
            height=h,
            split=_split(rel),
            src=str(label),
            where="",
        )
        if label.is_file():
            _read_label(label, rel, w, h, classes, boxes, problems)
    _report_orphan_labels(root, {_label_path(rel) for rel in image_paths}, problems)
    return classes, raw_images(dict(imgs)), raw_boxes(dict(boxes))


def _report_orphan_labels(root: Path, expected: set[str], problems: ProblemLog) -> None:
    """Label files with boxes but no image: their boxes cannot be used (as COCO annotations for
    an unknown image), so each file is reported rather than dropped in silence."""
    for dirpath, _dirs, names in os.walk(root / "labels"):
        for n in sorted(names):
            rel = os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/")
            if not n.endswith(".txt") or n == "classes.txt" or rel in expected:
                continue
            try:
                has_boxes = bool((root / rel).read_bytes().strip())
            except OSError:
                has_boxes = True
            if has_boxes:
                problems.add(
                    root / rel,
                    "label file without an image (looked for one with the same name under images/)",
                    kind="unknown-image",
                )


def _image_files(root: Path) -> list[str]:
    base = root / "images" if (root / "images").is_dir() else root
    out = []
    for dirpath, _dirs, names in os.walk(base):
        for n in names:
            if is_image_file(n):
                out.append(os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/"))
    return sorted(out)


def _label_path(rel: str) -> str:
    parts = list(PurePosixPath(rel).with_suffix(".txt").parts)
    if "images" in parts:  # replace the last images/ component, as Ultralytics does
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = "labels"
    else:
        parts.insert(0, "labels")
    return "/".join(parts)


def _split(rel: str) -> str:
    parts = PurePosixPath(rel).parts
    return _SPLITS.get(parts[1], "") if len(parts) > 2 and parts[0] == "images" else ""


def _add(cols: dict[str, list], **values) -> None:
    for k, v in values.items():
        cols[k].append(v)


def _read_label(
    label: Path, key: str, w: int, h: int, classes: list[str], boxes: dict, problems: ProblemLog
) -> None:
    try:
        text = label.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(label, f"cannot read label file ({exc})", kind="bad-file")
        return
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        parsed = _parse_line(fields)
        if isinstance(parsed, str):
            problems.add(label, parsed, kind="bad-record", where=f"line {n}")
            continue
        cls, cx, cy, bw, bh = parsed
        if max(abs(cx), abs(cy), abs(bw), abs(bh)) > 1.5:
            problems.add(
                label,
                "coordinates are not normalised to 0..1",
                kind="bad-coordinates",
                where=f"line {n}",
            )
            continue
        _add(
            boxes,
            key=key,
            class_id=cls if 0 <= cls < len(classes) else -1,
            label=f"id {cls}",
            x1=(cx - bw / 2) * w,
            y1=(cy - bh / 2) * h,
            x2=(cx + bw / 2) * w,
            y2=(cy + bh / 2) * h,
            src=str(label),
            where=f"line {n}",
        )


def _parse_line(fields: list[str]) -> tuple[int, float, float, float, float] | str:
    try:
        values = [float(v) for v in fields]
    except ValueError:
        return f"expected numbers, got {' '.join(fields)[:60]!r}"
    cls = values[0]
    if not np.isfinite(cls) or cls != int(cls):
        return f"class id {fields[0]!r} is not a whole number"
    coords = values[1:]
    if len(coords) == 4:
        return int(cls), *coords
    if len(coords) >= 6 and len(coords) % 2 == 0:  # segmentation polygon → its bounding box
        xs, ys = coords[0::2], coords[1::2]
        return (
            int(cls),
            (min(xs) + max(xs)) / 2,
            (min(ys) + max(ys)) / 2,
            max(xs) - min(xs),
            max(ys) - min(ys),
        )
    return f"expected 'class cx cy w h', got {len(fields)} fields"
