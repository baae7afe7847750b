"""Turns what a format reader found into a validated :class:`Catalog`.

Every reader produces two raw tables and hands them here, so every format gets the same checks:

- raw images: ``key`` (the reader's own image id), ``file_name`` (relative to the dataset root,
  possibly sloppy), ``width``/``height`` (as the source gives them: missing, ``None``, NaN and 0
  mean "not given"; see :func:`raw_images`), ``split``, and ``src``/``where`` (the annotation
  file and record, for messages);
- raw boxes: ``key``, ``class_id`` (-1 for a label the reader could not map), ``label`` (the raw
  label, for messages), ``x1 y1 x2 y2`` (pixels), ``src``/``where``. For speed on big COCO
  files ``where`` may be a bare annotation id and ``label`` a bare category id: messages are
  only formatted for the rows that have a problem.

Checks: paths that escape the root (``..``, absolute paths, symlinks pointing outside), missing and
unreadable image files, duplicate images, image sizes that are given but unusable (not a number,
not a positive whole number, or more pixels than the limit: reported, and read from the image
header instead), annotations for unknown images, unknown classes, NaN/infinite coordinates,
empty boxes, boxes outside the image (clipped when mostly inside, dropped otherwise).

Every record that is skipped, clipped or repaired is reported as a problem naming its file and
record. Not repairs, and so not reported: a size that is not given at all (read from the header),
and other spellings of the same path (backslashes, ``./``, an absolute path inside the root).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from defectdet.data import images as _images
from defectdet.data.catalog import BOX_COLUMNS, IMAGE_COLUMNS, Catalog
from defectdet.data.images import ImageError, read_size
from defectdet.data.problems import ProblemLog

RAW_IMAGE_COLUMNS = ["key", "file_name", "width", "height", "split", "src", "where"]
RAW_BOX_COLUMNS = ["key", "class_id", "label", "x1", "y1", "x2", "y2", "src", "where"]
#: A box clipped to the image must keep at least this share of its area, else it is dropped.
MIN_KEPT_AREA = 0.5


def raw_images(rows: dict[str, list]) -> pd.DataFrame:
    """The raw image table. ``width``/``height`` become floats, NaN where the source gives no
    usable size; ``size_error`` says why a size that was given is unusable ("" when it is fine or
    not given), for ``finalize`` to report when it reads the size from the image instead."""
    df = pd.DataFrame(rows, columns=RAW_IMAGE_COLUMNS)
    width, width_error = _sizes(df["width"], "width")
    height, height_error = _sizes(df["height"], "height")
    error = np.array(
        ["; ".join(e for e in pair if e) for pair in zip(width_error, height_error, strict=True)],
        dtype=object,
    )
    with np.errstate(invalid="ignore", over="ignore"):
        too_big = (width * height > _images.MAX_PIXELS) & (error == "")
    for i in np.flatnonzero(too_big):
        error[i] = (
            f"size {width[i]:.0f}x{height[i]:.0f} exceeds the limit of {_images.MAX_PIXELS} pixels"
        )
    bad = error != ""
    df["width"], df["height"] = np.where(bad, np.nan, width), np.where(bad, np.nan, height)
    df["size_error"] = error
    df["split"] = df["split"].fillna("").astype(str)
    return df


def _sizes(values: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(sizes as floats, NaN where not given or unusable; the reason per unusable value, or "").

    Not given: missing, None, NaN, "" or 0 (exports write 0 for "unknown"). Usable: a positive
    whole number up to the pixel limit. Anything else (text, booleans, lists, negative,
    fractional, infinite or huge numbers) is given but unusable.
    """
    if values.dtype.kind in "iuf":
        v = values.to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            usual = (v >= 1) & (v <= _images.MAX_PIXELS) & (v == np.floor(v))
        out = np.where(usual, v, np.nan)
        errors = np.full(len(v), "", dtype=object)
        for i in np.flatnonzero(~usual):  # few: check them one by one
            out[i], errors[i] = _size(v[i], name)
        return out, errors
    out = np.full(len(values), np.nan)
    errors = np.full(len(values), "", dtype=object)
    for i, value in enumerate(values.tolist()):
        out[i], errors[i] = _size(value, name)
    return out, errors


def _size(value: object, name: str) -> tuple[float, str]:
    """One size value: (the size, "") or (NaN, "" when not given, else the reason)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, str) and not value.strip()):
        return np.nan, ""
    text = f"{value:g}" if isinstance(value, float) else repr(value)
    text = text if len(text) <= 24 else text[:20] + "..."
    if isinstance(value, bool) or not isinstance(value, int | float):
        return np.nan, f"{name} {text} is not a number"
    try:
        v = float(value)
    except OverflowError:
        v = float("inf")
    if np.isnan(v) or v == 0:
        return np.nan, ""
    if not (np.isfinite(v) and v >= 1 and v == np.floor(v)):
        return np.nan, f"{name} {text} is not a positive whole number"
    if v > _images.MAX_PIXELS:
        return np.nan, f"{name} {v:g} exceeds the limit of {_images.MAX_PIXELS} pixels"
    return v, ""


def raw_boxes(rows: dict[str, list]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=RAW_BOX_COLUMNS)
    for c in ("x1", "y1", "x2", "y2"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    df["class_id"] = pd.to_numeric(df["class_id"], errors="coerce").fillna(-1).astype("int64")
    return df


def finalize(
    root: Path,
    classes: list[str],
    images: pd.DataFrame,
    boxes: pd.DataFrame,
    problems: ProblemLog,
    fmt: str,
    check_images: bool = True,
) -> Catalog:
    """Validate the raw tables and build the catalogue (see the module docstring)."""
    root = Path(root).resolve()
    images = images.reset_index(drop=True).copy()
    listed_keys = set(images["key"])  # boxes of images dropped below need no second warning
    # object dtype even when empty (an empty float column has no .str accessor)
    images["file_name"] = pd.Series(
        _normalise_names(images["file_name"]), index=images.index, dtype=object
    )
    images = _drop_escaping(root, images, problems)
    images = _drop_duplicates(images, problems)
    if check_images:
        images = _drop_missing(root, images, problems)
    images = _read_headers(root, images, problems, every=check_images)
    images["image_id"] = _image_ids(images)
    boxes = _attach_boxes(images, boxes, classes, problems, listed_keys)
    boxes = _check_coordinates(images, boxes, problems)
    problems.check_strict()
    cat_images = images[IMAGE_COLUMNS].astype({"width": "int64", "height": "int64"})
    cat_boxes = boxes[BOX_COLUMNS].reset_index(drop=True)
    return Catalog(root, list(classes), cat_images.reset_index(drop=True), cat_boxes, fmt, problems)


# ---------------------------------------------------------------------------- images
def _normalise_names(names: pd.Series) -> list[str]:
    """Clean POSIX relative paths; only the names that need it go through normpath."""
    text = names.astype(str)
    messy = text.str.contains(r"\\|//|(?:^|/)\.\.?(?:/|$)|^\s|\s$|/$", regex=True)
    out = text.tolist()
    for i in np.flatnonzero(messy.to_numpy()):
        out[i] = _normalise(out[i])
    return out


def _normalise(name: object) -> str:
    text = str(name).replace("\\", "/").strip()
    return posixpath.normpath(text) if text else ""


def _drop_escaping(root: Path, images: pd.DataFrame, problems: ProblemLog) -> pd.DataFrame:
    names = images["file_name"]
    bad = names.eq("") | names.eq(".") | names.str.startswith("../") | names.eq("..")
    bad |= names.str.startswith("/") | names.str.match(r"^[A-Za-z]:/")
    # Absolute paths inside the root are fine: make them relative instead of refusing them.
    for i in np.flatnonzero(bad.to_numpy()):
        name = names.iat[i]
        if name.startswith("/") and _inside(root, Path(name)):
            images.iat[i, images.columns.get_loc("file_name")] = (
                Path(name).resolve().relative_to(root).as_posix()
            )
            bad.iat[i] = False
    _report(
        images,
        bad,
        problems,
        "path-escape",
        lambda r: (
            f"image path {r.file_name!r} "
            + (
                "has no file name"
                if r.file_name in ("", ".")
                else "points outside the dataset root"
            )
        ),
    )
    return images[~bad]


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except (ValueError, OSError):
        return False


def _drop_duplicates(images: pd.DataFrame, problems: ProblemLog) -> pd.DataFrame:
    dup = images.duplicated("file_name", keep="first") | images.duplicated("key", keep="first")
    _report(
        images,
        dup,
        problems,
        "duplicate-image",
        lambda r: f"duplicate image entry for {r.file_name!r} (first one kept)",
    )
    return images[~dup]


def _drop_missing(root: Path, images: pd.DataFrame, problems: ProblemLog) -> pd.DataFrame:
    """Missing files and symlinks leading outside the root, found with one walk of the tree."""
    present, links = _scan(root)
    names = images["file_name"].to_numpy()
    found = np.fromiter((n in present for n in names), bool, len(names))
    # Files the walk could not see (e.g. under a linked folder) get a direct check.
    for i in np.flatnonzero(~found):
        found[i] = (root / names[i]).is_file()
        if found[i]:
            links.add(names[i])
    bad_link = np.fromiter(
        (n in links and not _inside(root, root / n) for n in names), bool, len(names)
    )
    _report(
        images,
        bad_link,
        problems,
        "path-escape",
        lambda r: f"image {r.file_name!r} is a link that points outside the dataset root",
    )
    _report(
        images, ~found, problems, "missing-image", lambda r: f"image file {r.file_name!r} not found"
    )
    return images[found & ~bad_link]


def _scan(root: Path) -> tuple[set[str], set[str]]:
    """Relative POSIX paths of all files under root, and those that are symlinks."""
    files: set[str] = set()
    links: set[str] = set()
    for dirpath, _dirs, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        for n in names:
            files.add(prefix + n)
            if os.path.islink(os.path.join(dirpath, n)):
                links.add(prefix + n)
    return files, links


def _read_headers(
    root: Path, images: pd.DataFrame, problems: ProblemLog, every: bool
) -> pd.DataFrame:
    """Read image headers (never the pixels), one read per image, and skip unreadable images.

    With ``every`` (images are checked) every image's header is read, so a zero-byte file, a
    text file named ``.png``, a cut header or a decompression bomb is reported even when the
    annotations give its size; otherwise only the images that need a size are read. Sizes come
    from the header only where the annotations do not give a usable one (see ``raw_images``);
    a size that was given but unusable (e.g. 1e308, which no integer holds) is reported with the
    size read instead.
    """
    w, h = images["width"], images["height"]
    need = ~((w >= 1) & (h >= 1))
    read = need | every
    if not read.any():
        return images
    idx = images.index[read]
    paths = [root / f for f in images.loc[idx, "file_name"]]
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = pd.Series(list(pool.map(_size_or_error, paths)), index=idx, dtype=object)
    bad = sizes.map(lambda s: isinstance(s, str))
    given = images.get("size_error", pd.Series("", index=images.index)).fillna("").astype(str)
    error = sizes[bad].reindex(images.index)
    if not every:  # the header was read only because the given size was unusable: say so
        error = pd.Series([_joined(g, e) for g, e in zip(given, error, strict=True)], error.index)
    errors = images.assign(error=error)
    _report(errors, error.notna(), problems, "unreadable-image", lambda r: r.error)
    fill = idx[need[idx].to_numpy() & ~bad.to_numpy()]
    images.loc[fill, "width"] = [float(sizes[i][0]) for i in fill]
    images.loc[fill, "height"] = [float(sizes[i][1]) for i in fill]
    repaired = images.index.isin(fill) & (given != "").to_numpy()
    _report(
        images,
        repaired,
        problems,
        "bad-size",
        lambda r: r.size_error,
        action=lambda r: f"size read from the image: {r.width:.0f}x{r.height:.0f}",
    )
    return images.drop(index=idx[bad.to_numpy()])


def _joined(size_error: str, error: object) -> object:
    """The read error, after the reason the size had to be read (when there was one)."""
    if not isinstance(error, str):
        return error
    return f"{size_error}, and {error}" if size_error else error


def _size_or_error(path: Path) -> tuple[int, int] | str:
    try:
        return read_size(path)
    except ImageError as exc:
        return str(exc)


def _image_ids(images: pd.DataFrame) -> np.ndarray:
    """Keep the source's integer ids when they are unique integers, else number from 1."""
    keys = pd.to_numeric(images["key"], errors="coerce")
    exact = (keys == keys.round()) & (keys.abs() < 2**53)  # whole, and exact in int64 and float
    if len(keys) and keys.notna().all() and exact.all() and keys.is_unique:
        return keys.astype("int64").to_numpy()
    return np.arange(1, len(images) + 1, dtype=np.int64)


# ---------------------------------------------------------------------------- boxes
def _attach_boxes(
    images: pd.DataFrame,
    boxes: pd.DataFrame,
    classes: list[str],
    problems: ProblemLog,
    listed_keys: set,
) -> pd.DataFrame:
    id_of = pd.Series(images["image_id"].to_numpy(), index=images["key"].to_numpy())
    id_of = id_of[~id_of.index.duplicated()]
    boxes = boxes.copy()
    boxes["image_id"] = boxes["key"].map(id_of)
    orphan = boxes["image_id"].isna()
    _report(
        boxes,
        orphan & ~boxes["key"].isin(listed_keys),
        problems,
        "unknown-image",
        lambda r: f"annotation refers to unknown image {r.key!r}",
    )
    boxes = boxes[~orphan]
    unknown = (boxes["class_id"] < 0) | (boxes["class_id"] >= len(classes))
    _report(
        boxes,
        unknown,
        problems,
        "unknown-class",
        lambda r: (
            "unknown class "
            + (repr(r.label) if isinstance(r.label, str) else f"(category_id {r.label!r})")
        ),
    )
    boxes = boxes[~unknown].copy()
    boxes["image_id"] = boxes["image_id"].astype("int64")
    return boxes


def _check_coordinates(
    images: pd.DataFrame, boxes: pd.DataFrame, problems: ProblemLog
) -> pd.DataFrame:
    size = images.set_index("image_id")[["width", "height"]]
    w = boxes["image_id"].map(size["width"]).to_numpy(dtype=float)
    h = boxes["image_id"].map(size["height"]).to_numpy(dtype=float)
    xyxy = boxes[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)
    finite = np.isfinite(xyxy).all(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):  # 1e308-sized boxes: inf, then dropped
        area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    positive = finite & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    clipped = np.stack(
        [
            np.clip(xyxy[:, 0], 0, w),
            np.clip(xyxy[:, 1], 0, h),
            np.clip(xyxy[:, 2], 0, w),
            np.clip(xyxy[:, 3], 0, h),
        ],
        axis=1,
    )
    kept_area = np.clip(clipped[:, 2] - clipped[:, 0], 0, None) * np.clip(
        clipped[:, 3] - clipped[:, 1], 0, None
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        kept_share = np.where(positive, kept_area / np.where(positive, area, 1), 0)
    outside = positive & (np.abs(clipped - xyxy).max(axis=1) > 1e-6)
    drop_out = outside & (kept_share < MIN_KEPT_AREA)
    clip_ok = outside & ~drop_out
    _report_coords(
        boxes, ~finite, problems, "box has missing or non-finite coordinates", "bad-coordinates"
    )
    _report_coords(
        boxes, finite & ~positive, problems, "box has zero or negative width/height", "empty-box"
    )
    _report_coords(boxes, drop_out, problems, "box lies mostly outside the image", "box-outside")
    _report_coords(
        boxes,
        clip_ok,
        problems,
        "box extends past the image border",
        "box-clipped",
        action="clipped to the image",
    )
    boxes = boxes.copy()
    boxes[["x1", "y1", "x2", "y2"]] = clipped
    return boxes[positive & ~drop_out]


def _report(
    rows: pd.DataFrame,
    mask,
    problems: ProblemLog,
    kind: str,
    message: Callable[[Any], str],
    action: str | Callable[[Any], str] = "skipped",
) -> None:
    """One problem per masked row (images or boxes), named by its file and record."""
    for r in rows[np.asarray(mask, dtype=bool)].itertuples(index=False):
        done = action(r) if callable(action) else action
        problems.add(r.src, message(r), kind=kind, where=_where(r.where), action=done)


def _report_coords(
    boxes: pd.DataFrame, mask, problems: ProblemLog, msg: str, kind: str, action: str = "skipped"
) -> None:
    _report(
        boxes,
        mask,
        problems,
        kind,
        lambda r: f"{msg} ({', '.join(f'{v:g}' for v in (r.x1, r.y1, r.x2, r.y2))})",
        action,
    )


def _where(value: object) -> str:
    """Readers give a place as text, or (COCO boxes) as the bare annotation id."""
    return value if isinstance(value, str) else f"annotation id {value}"
