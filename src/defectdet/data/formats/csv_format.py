"""CSV: one row per box, ``image,x1,y1,x2,y2,label`` (pixels). Optional ``split`` column. Image
paths are relative to the CSV's folder. Common header spellings (``filename``, ``xmin``,
``class``...) are accepted.

A row with an image name only (label and all four coordinates empty) is an image without
defects. A row with a label but not all four coordinates, or coordinates but no label, is a bad
record (a cut line such as ``b.png,1`` is one): it is reported by file and line and skipped
whole, so its image is not taken for defect-free. So is a row with more fields than the header.
Missing trailing fields count as empty. Blank lines are skipped; line numbers in messages are
the file's own.
"""

from __future__ import annotations

import csv
from pathlib import Path

from defectdet.data.problems import ProblemLog
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
_COORDS = ("x1", "y1", "x2", "y2")


def find_csv_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(path.glob("*.csv"))


def read_csv(path: Path, root: Path, problems: ProblemLog | None = None):
    """Returns (classes, raw images, raw boxes). Incomplete rows are reported here; bad values
    (paths, coordinates, classes) later, by ``finalize``."""
    problems = problems if problems is not None else ProblemLog()
    files = find_csv_files(path)
    if not files:
        raise DataError(f"{path}: no CSV file found")
    rows = [row for f in files for row in _rows(f, root, problems)]
    classes = sorted({r["label"] for r in rows if r["label"]})
    class_id = {n: i for i, n in enumerate(classes)}
    img: dict[str, list] = {k: [] for k in ("key", "file_name", "split", "src", "where")}
    split_of: dict[str, tuple[str, str]] = {}
    for r in rows:
        first = split_of.get(r["image"])
        if first is None:
            split_of[r["image"]] = (r["split"], r["where"])
            for k, v in (("key", r["image"]), ("file_name", r["image"])):
                img[k].append(v)
            for k in ("split", "src", "where"):
                img[k].append(r[k])
        elif r["split"] != first[0]:
            problems.add(
                r["src"],
                f"image {r['image']!r} is in split {r['split']!r} here but in "
                f"{first[0]!r} on {first[1]}",
                kind="split-conflict",
                where=r["where"],
                action=f"kept in split {first[0]!r}",
            )
    img["width"] = img["height"] = [float("nan")] * len(img["key"])
    boxed = [r for r in rows if r["label"]]
    box = {
        "key": [r["image"] for r in boxed],
        "class_id": [class_id[r["label"]] for r in boxed],
        "label": [r["label"] for r in boxed],
        **{c: [r[c] for r in boxed] for c in _COORDS},
        "src": [r["src"] for r in boxed],
        "where": [r["where"] for r in boxed],
    }
    return classes, raw_images(img), raw_boxes(box)


def _rows(f: Path, root: Path, problems: ProblemLog) -> list[dict[str, str]]:
    """The usable rows of one file, as dicts of stripped text, with ``src`` and ``where``."""
    try:
        with f.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, skipinitialspace=True, strict=True)
            lines = []
            start = 1
            for fields in reader:
                lines.append((start, [v.strip() for v in fields]))
                start = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{f}: not a readable CSV file ({str(exc).splitlines()[0]})") from exc
    lines = [(n, fields) for n, fields in lines if any(fields)]  # blank lines
    if not lines:
        raise DataError(f"{f}: not a readable CSV file (no header line)")
    header = [c.lower() for c in lines[0][1]]
    index: dict[str, int] = {}
    for canon, names in _ALIASES.items():
        found = next((c for c in names if c in header), None)
        if found is None:
            raise DataError(f"{f}: missing column '{canon}' (expected image,x1,y1,x2,y2,label)")
        index[canon] = header.index(found)
    if "split" in header:
        index["split"] = header.index("split")
    prefix = f.parent.resolve().relative_to(root.resolve()).as_posix()
    out = []
    for n, fields in lines[1:]:
        where = f"line {n}"
        if len(fields) > len(header):
            problems.add(
                f,
                f"row has {len(fields)} fields, the header {len(header)}",
                kind="bad-record",
                where=where,
            )
            continue
        fields = fields + [""] * (len(header) - len(fields))
        row = {k: fields[i] for k, i in index.items()}
        coords = [row[c] for c in _COORDS]
        if any(coords) or row["label"]:
            missing = [c for c in _COORDS if not row[c]]
            if not row["label"]:
                problems.add(f, "row has coordinates but no label", kind="bad-record", where=where)
                continue
            if missing:
                problems.add(
                    f,
                    f"row has a label but no {', '.join(missing)}",
                    kind="bad-record",
                    where=where,
                )
                continue
        image = row["image"]
        row["image"] = f"{prefix}/{image}" if prefix != "." and image else image
        row.setdefault("split", "")
        row["src"], row["where"] = str(f), where
        out.append(row)
    return out
