"""Format readers, chosen automatically from what a path holds (``--format`` forces one)."""

from __future__ import annotations

from pathlib import Path

from defectdet.data.catalog import Catalog
from defectdet.data.formats.coco import find_coco_files, read_coco
from defectdet.data.formats.csv_format import find_csv_files, read_csv
from defectdet.data.formats.voc import read_voc
from defectdet.data.formats.yolo import is_yolo, read_yolo
from defectdet.data.negatives import add_negatives
from defectdet.data.problems import ProblemLog
from defectdet.data.validate import finalize
from defectdet.errors import DataError

FORMATS = ("coco", "voc", "yolo", "csv")


def detect_format(path: Path) -> str:
    """Guess the format of a file or folder; raise DataError when nothing fits."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "coco"
        if suffix == ".csv":
            return "csv"
        if suffix in (".yaml", ".yml"):
            return "yolo"
        if suffix == ".xml":
            return "voc"
        raise DataError(
            f"{path}: cannot tell the annotation format from a {suffix or 'bare'} "
            "file; pass --format"
        )
    if is_yolo(path):
        return "yolo"
    if find_coco_files(path):
        return "coco"
    if any(path.rglob("*.xml")):
        return "voc"
    if find_csv_files(path):
        return "csv"
    raise DataError(
        f"{path}: no annotations found (looked for COCO *.json, Pascal VOC *.xml, YOLO "
        "labels/ with data.yaml or classes.txt, and *.csv)"
    )


def dataset_root(path: Path, fmt: str) -> Path:
    """The folder image paths are relative to (and that no image may escape)."""
    if path.is_dir():
        return path
    parent = path.parent
    if fmt == "coco" and parent.name.lower() == "annotations":
        return parent.parent
    return parent


def load_dataset(
    path: str | Path,
    fmt: str = "auto",
    strict: bool = False,
    check_images: bool = True,
    negatives: list[str | Path] | tuple = (),
) -> Catalog:
    """Read, validate and return the dataset at ``path``, with the good parts of each
    ``negatives`` folder added (:mod:`defectdet.data.negatives`).

    Bad records are skipped and listed in ``catalog.problems``; under ``strict`` any problem is
    a :class:`DataError`. ``check_images=False`` trusts the annotations' image sizes and does not
    look for the files (analysing an annotation file on its own).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)} or auto")
    root = dataset_root(path, fmt).resolve()
    problems = ProblemLog(strict=strict)
    if fmt == "coco":
        classes, images, boxes = read_coco(path.resolve(), root, problems)
    elif fmt == "voc":
        classes, images, boxes = read_voc(root, problems)
    elif fmt == "yolo":
        classes, images, boxes = read_yolo(root, problems)
    else:
        classes, images, boxes = read_csv(path.resolve(), root, problems)
    catalog = finalize(root, classes, images, boxes, problems, fmt, check_images=check_images)
    if catalog.num_images == 0:  # good parts alone are not a dataset
        detail = f"\n{problems.format(10)}" if len(problems) else ""
        raise DataError(f"{path}: no usable images in this dataset{detail}")
    return add_negatives(catalog, list(negatives)) if negatives else catalog
