"""CSV: one row per box, ``image,x1,y1,x2,y2,label`` (pixels); an empty label marks an image
without defects. Optional ``split`` column. Image paths are relative to the CSV's folder.
Common header spellings (``filename``, ``xmin``, ``class``...) are accepted.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from defectdet.data.validate import raw_boxes, raw_images
from defectdet.errors import DataError

_ALIASES = {
    "image": ("image", "filename", "file_name", "file", "path", "image_path"),
    "x1": ("x1", "xmin", "x_min", "left"),
    "y1": ("y1", "ymin", "y_min", "top"),
    "x2": ("x2", "xmax", "x_max", "right"),
    "y2": ("y2", "ymax", "y_max", "bottom"),
    "label": ("label", "class", "class_name", "category", "name"),
}


def find_csv_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(path.glob("*.csv"))


def read_csv(path: Path, root: Path):
    """Returns (classes, raw images, raw boxes). Bad rows are reported later, by ``finalize``."""
    files = find_csv_files(path)
    if not files:
        raise DataError(f"{path}: no CSV file found")
    frames = [_load(f, root) for f in files]
    df = pd.concat(frames, ignore_index=True)
    labels = df["label"].fillna("").astype(str).str.strip()
    classes = sorted(set(labels[labels != ""]))
    images = df.drop_duplicates("image")
    img = {
        "key": images["image"].tolist(),
        "file_name": images["image"].tolist(),
        "width": [float("nan")] * len(images),
        "height": [float("nan")] * len(images),
        "split": images["split"].tolist(),
        "src": images["src"].tolist(),
        "where": images["where"].tolist(),
    }
    has_box = labels != ""
    boxed = df[has_box]
    class_id = {n: i for i, n in enumerate(classes)}
    box = {
        "key": boxed["image"].tolist(),
        "class_id": [class_id.get(n, -1) for n in labels[has_box]],
        "label": labels[has_box].tolist(),
        **{c: pd.to_numeric(boxed[c], errors="coerce").tolist() for c in ("x1", "y1", "x2", "y2")},
        "src": boxed["src"].tolist(),
        "where": boxed["where"].tolist(),
    }
    return classes, raw_images(img), raw_boxes(box)


def _load(f: Path, root: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(f, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{f}: not a readable CSV file ({str(exc).splitlines()[0]})") from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    rename = {}
    for canon, names in _ALIASES.items():
        found = next((c for c in names if c in df.columns), None)
        if found is None:
            raise DataError(f"{f}: missing column '{canon}' (expected image,x1,y1,x2,y2,label)")
        rename[found] = canon
    df = df.rename(columns=rename)
    if "split" not in df.columns:
        df["split"] = ""
    prefix = f.parent.resolve().relative_to(root.resolve()).as_posix()
    df["image"] = [f"{prefix}/{p}" if prefix != "." and p else p for p in df["image"].str.strip()]
    df["src"] = str(f)
    df["where"] = [f"line {i + 2}" for i in range(len(df))]
    return df[["image", "x1", "y1", "x2", "y2", "label", "split", "src", "where"]]
