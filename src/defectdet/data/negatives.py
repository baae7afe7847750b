"""Folders of good parts (``--negatives DIR``): every image under DIR is a defect-free image,
no annotation file needed. Each folder is read as a small dataset of its own, so its images get
every check a dataset's images get (unreadable or non-image files named and skipped, symlinks
that leave the folder refused, decompression bombs refused from the header), then joins the
catalogue with absolute file names and no split.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from defectdet.data.catalog import Catalog
from defectdet.data.images import is_image_file
from defectdet.data.problems import ProblemLog
from defectdet.data.validate import RAW_BOX_COLUMNS, finalize, raw_boxes, raw_images
from defectdet.errors import DataError


def read_negatives(folder: str | Path, classes: list[str], problems: ProblemLog) -> Catalog:
    """The images under ``folder`` (recursively, in name order) as a catalogue of defect-free
    images rooted at ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--negatives {folder}: no such folder")
    root = folder.resolve()
    files = sorted(p for p in folder.rglob("*") if is_image_file(p) and not p.is_dir())
    names = [p.relative_to(folder).as_posix() for p in files]
    rows = {
        "key": list(range(len(names))),
        "file_name": names,
        "width": [None] * len(names),
        "height": [None] * len(names),
        "split": [""] * len(names),
        "src": [str(folder)] * len(names),
        "where": names,
    }
    empty = raw_boxes({c: [] for c in RAW_BOX_COLUMNS})
    neg = finalize(root, classes, raw_images(rows), empty, problems, "folder")
    if not neg.num_images:
        problems.add(folder, "no readable images in this --negatives folder", kind="negatives")
    return neg


def add_negatives(catalog: Catalog, folders: list[str | Path]) -> Catalog:
    """``catalog`` with the good parts of ``folders`` appended (new image ids; their folder in
    ``catalog.negatives``). Problems go to the catalogue's own log (``--strict`` applies)."""
    images, negatives = [catalog.images], dict(catalog.negatives)
    next_id = int(catalog.images["image_id"].max()) + 1 if catalog.num_images else 1
    for folder in folders:
        neg = read_negatives(folder, catalog.classes, catalog.problems)
        table = neg.images.copy()
        table["file_name"] = [(neg.root / f).as_posix() for f in table["file_name"]]
        table["image_id"] = range(next_id, next_id + len(table))
        next_id += len(table)
        negatives[str(folder)] = table["image_id"].astype(int).tolist()
        images.append(table)
    catalog.problems.check_strict()
    merged = pd.concat(images, ignore_index=True)
    return Catalog(
        catalog.root,
        list(catalog.classes),
        merged,
        catalog.boxes,
        catalog.format,
        catalog.problems,
        negatives,
    )
