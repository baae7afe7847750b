"""COCO detection JSON: one file, or a folder holding one or several (e.g. train.json, val.json).

Several files become splits named after them (``instances_train2017.json`` → ``train``). Image
paths are resolved against the first of (the JSON's folder, the dataset root, ``images/`` under
either) that finds most of them. Built for speed: a file with a million boxes is turned into
column arrays with no per-box Python objects beyond what ``json.load`` already made.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from defectdet.data.problems import ProblemLog
from defectdet.data.validate import raw_boxes, raw_images
from defectdet.errors import DataError

_SPLIT_WORDS = ("train", "trainval", "val", "valid", "test")


def find_coco_files(path: Path) -> list[Path]:
    """COCO JSON files at ``path`` (a file, or JSON files in the folder or one level below)."""
    if path.is_file():
        return [path]
    candidates = sorted(path.glob("*.json")) + sorted(path.glob("*/*.json"))
    return [p for p in candidates if _looks_like_coco(p)]


def _looks_like_coco(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b'"images"' in head or b'"annotations"' in head or b'"categories"' in head


def split_name(path: Path) -> str:
    """``instances_train2017.json`` → ``train``; otherwise the file's stem."""
    stem = path.stem.lower()
    for word in sorted(_SPLIT_WORDS, key=len, reverse=True):
        if re.search(rf"(^|[^a-z]){word}([^a-z]|$)", stem):
            return "val" if word == "valid" else word
    return stem


def read_coco(path: Path, root: Path, problems: ProblemLog):
    """Read COCO file(s) at ``path``. Returns (classes, raw images, raw boxes)."""
    files = find_coco_files(path)
    if not files:
        raise DataError(f"{path}: no COCO JSON file found")
    docs = [(f, _load(f)) for f in files]
    cat_ids, classes = _categories(docs, problems)
    multi = len(docs) > 1
    img_cols: dict[str, list] = {
        k: [] for k in ("key", "file_name", "width", "height", "split", "src", "where")
    }
    # Exports that restart image ids at 1 in every file are common: then an image is known by
    # (file, id), not by its id alone.
    namespaced = multi and _ids_collide(docs)
    box_parts = []
    for n, (f, doc) in enumerate(docs):
        base = _image_base(f, root, doc)
        split = split_name(f) if multi else None
        space = n if namespaced else None
        _add_images(f, doc, base, split, img_cols, problems, space)
        box_parts.append(_boxes(f, doc, cat_ids, problems, space))
    boxes = pd.concat([raw_boxes(part) for part in box_parts], ignore_index=True)
    return classes, raw_images(img_cols), boxes


def _ids_collide(docs: list[tuple[Path, dict]]) -> bool:
    seen: set = set()
    for _f, doc in docs:
        ids = {im.get("id") for im in doc.get("images", []) if isinstance(im, dict)}
        ids = {i for i in ids if _is_id(i)}
        if seen & ids:
            return True
        seen |= ids
    return False


def _namespaced(space: int | None, ids: list) -> list:
    """Image keys unique across files: ``"<file number>/<id>"`` where ids collide."""
    return ids if space is None else [f"{space}/{i}" for i in ids]


def _load(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise DataError(f"{path}: JSON nested too deeply") from exc
    if not isinstance(doc, dict):
        raise DataError(f"{path}: a COCO file must hold a JSON object, not {type(doc).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key, []), list):
            raise DataError(f"{path}: '{key}' must be a list")
    return doc


def _categories(docs, problems: ProblemLog) -> tuple[dict, list[str]]:
    """Category id → class index (ids sorted), and the class names."""
    names: dict[int, str] = {}
    for f, doc in docs:
        for i, cat in enumerate(doc.get("categories", [])):
            cid = cat.get("id") if isinstance(cat, dict) else None
            name = cat.get("name") if isinstance(cat, dict) else None
            if not isinstance(cid, int) or isinstance(cid, bool) or not isinstance(name, str):
                problems.add(
                    f,
                    f"category entry {cat!r} needs an integer id and a name",
                    kind="bad-category",
                    where=f"categories[{i}]",
                )
                continue
            if cid in names and names[cid] != name:
                problems.add(
                    f,
                    f"category id {cid} is {name!r} here but {names[cid]!r} elsewhere",
                    kind="bad-category",
                    where=f"categories[{i}]",
                )
                continue
            names[cid] = name
    if not names:
        raise DataError(f"{docs[0][0]}: no categories defined")
    ordered = sorted(names)
    duplicates = {n for n in names.values() if list(names.values()).count(n) > 1}
    if duplicates:
        raise DataError(f"{docs[0][0]}: category names used twice: {', '.join(sorted(duplicates))}")
    return {cid: i for i, cid in enumerate(ordered)}, [names[c] for c in ordered]


def _image_base(path: Path, root: Path, doc: dict) -> str:
    """The folder (relative to root) that image file names in this JSON are relative to."""
    sample = [im.get("file_name") for im in doc.get("images", [])[:50] if isinstance(im, dict)]
    sample = [s for s in sample if isinstance(s, str)]
    bases = [path.parent, root, path.parent / "images", root / "images", path.parent.parent]
    best, best_hits = path.parent, -1
    for base in bases:
        hits = sum((base / s).is_file() for s in sample)
        if hits > best_hits:
            best, best_hits = base, hits
    try:
        rel = best.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = ""
    return "" if rel == "." else rel


def _add_images(
    f: Path,
    doc: dict,
    base: str,
    split: str | None,
    cols: dict,
    problems: ProblemLog,
    space: int | None = None,
) -> None:
    images = doc.get("images", [])
    good = [
        im for im in images if isinstance(im, dict) and "file_name" in im and _is_id(im.get("id"))
    ]
    if len(good) < len(images):
        for i, im in enumerate(images):
            if not (isinstance(im, dict) and "file_name" in im and _is_id(im.get("id"))):
                problems.add(
                    f,
                    "image entry needs an integer 'id' and a 'file_name'",
                    kind="bad-record",
                    where=f"images[{i}]",
                )
    ids = [im["id"] for im in good]
    names = [im["file_name"] for im in good]
    cols["key"] += _namespaced(space, ids)
    cols["file_name"] += [f"{base}/{n}" if base and isinstance(n, str) else n for n in names]
    # As given: ``raw_images`` tells missing sizes from unusable ones (reported, then read).
    cols["width"] += [im.get("width") for im in good]
    cols["height"] += [im.get("height") for im in good]
    cols["split"] += [split] * len(good) if split is not None else _splits(f, good, problems)
    cols["src"] += [str(f)] * len(good)
    cols["where"] += [f"image id {i}" for i in ids]


def _splits(f: Path, images: list[dict], problems: ProblemLog) -> list[str]:
    """Each image's own ``split`` field: a name, or "" when absent or null; anything else is
    reported and treated as no split."""
    out = []
    for im in images:
        value = im.get("split")
        if value is not None and not isinstance(value, str):
            problems.add(
                f,
                f"split {str(value)[:40]!r} is not a name",
                kind="bad-record",
                where=f"image id {im['id']}",
                action="no split",
            )
            value = None
        out.append(value or "")
    return out


def _boxes(
    f: Path, doc: dict, cat_ids: dict, problems: ProblemLog, space: int | None = None
) -> dict:
    """Column arrays of the file's boxes. ``where`` holds annotation ids and ``label`` raw
    category ids: messages are formatted only for the few rows that have a problem."""
    anns = doc.get("annotations", [])
    good = anns if _fast_ok(anns) else _good_annotations(f, anns, problems)
    xywh = _bbox_array(good)
    with np.errstate(over="ignore"):  # x + w beyond 1e308 is inf: reported as non-finite later
        x2, y2 = xywh[:, 0] + xywh[:, 2], xywh[:, 1] + xywh[:, 3]
    cats = [a.get("category_id") for a in good]
    get = cat_ids.get
    return {
        "key": _column(_namespaced(space, [a["image_id"] for a in good])),
        # ``type(c) is int`` also refuses booleans, which JSON true/false would give.
        "class_id": np.array([get(c, -1) if type(c) is int else -1 for c in cats], np.int64),
        "label": _column(cats),
        "x1": xywh[:, 0],
        "y1": xywh[:, 1],
        "x2": x2,
        "y2": y2,
        "src": np.full(len(good), str(f), dtype=object),
        "where": _column([a.get("id", i) for i, a in enumerate(good)]),
    }


def _column(values: list) -> np.ndarray:
    """A list as an array: int64 when it is all integers (fast to tabulate), else objects."""
    if all(type(v) is int for v in values):  # not bool, not "5", not 2.5
        try:
            return np.array(values, dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            pass
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _fast_ok(anns: list) -> bool:
    """True when every annotation is a dict with an integer image_id (the normal case)."""
    try:
        ids = np.array([a["image_id"] for a in anns])
    except (TypeError, KeyError, ValueError, OverflowError):
        return False
    # ndim: a list for an id ([[1, 2], ...]) would otherwise pass as a 2-D integer array.
    return len(anns) == 0 or (ids.dtype.kind in "iu" and ids.ndim == 1)


def _good_annotations(f: Path, anns: list, problems: ProblemLog) -> list[dict]:
    good = []
    for i, a in enumerate(anns):
        if isinstance(a, dict) and _is_id(a.get("image_id")):
            good.append(a)
        else:
            problems.add(
                f,
                "annotation needs an integer 'image_id'",
                kind="bad-record",
                where=f"annotations[{i}]",
            )
    return good


def _bbox_array(anns: list[dict]) -> np.ndarray:
    """(N, 4) float xywh; malformed bboxes become NaN rows (reported later as bad coordinates)."""
    try:
        arr = np.array([a["bbox"] for a in anns])
        if arr.shape == (len(anns), 4) and arr.dtype.kind in "if":
            return arr.astype(np.float64)
    except (KeyError, ValueError, TypeError):
        pass
    out = np.full((len(anns), 4), np.nan)
    for i, a in enumerate(anns):
        b = a.get("bbox")
        if isinstance(b, list) and len(b) == 4:
            out[i] = [_num(v) for v in b]
    return out


def _is_id(v: object) -> bool:
    return isinstance(v, int | str) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _num(v: object) -> float:
    """A JSON number as a float; NaN for anything else (JSON integers too large for a float:
    ``float(10**400)`` would raise OverflowError)."""
    if not _is_num(v):
        return float("nan")
    try:
        return float(v)
    except OverflowError:
        return float("nan")
