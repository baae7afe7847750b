"""Pascal VOC XML, as real exports look: XML files anywhere under the folder.

The image is found through ``<filename>`` (next to the XML, or anywhere in the dataset by name);
where that is missing, lacks its extension or points elsewhere, by the XML file's stem among the
dataset's images. Coordinates follow detectron2's reading of VOC (1-based pixel indices: x1 and y1
are shifted by one). Splits come from ``ImageSets/Main/{train,val,test,trainval}.txt`` when present.
XML is parsed with defusedxml, so entity-expansion bombs and external entities are refused.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path, PurePosixPath

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from defectdet.data.images import is_image_file
from defectdet.data.problems import ProblemLog
from defectdet.data.validate import raw_boxes, raw_images
from defectdet.errors import DataError


def find_xml_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.xml") if p.is_file())


def read_voc(root: Path, problems: ProblemLog):
    """Returns (classes, raw images, raw boxes)."""
    xmls = find_xml_files(root)
    if not xmls:
        raise DataError(f"{root}: no VOC XML files found")
    index = _ImageIndex(root)
    splits = _splits(root, problems)
    records = [r for x in xmls if (r := _parse(x, problems)) is not None]
    classes = sorted({name for rec in records for name, *_ in rec["objects"]})
    class_id = {n: i for i, n in enumerate(classes)}
    imgs: dict[str, list] = defaultdict(list)
    boxes: dict[str, list] = defaultdict(list)
    for rec in records:
        xml = rec["xml"]
        rel, guess = index.resolve(xml, rec["filename"])
        if rel is None:
            problems.add(
                xml,
                f"no image found for this annotation (filename {rec['filename']!r})",
                kind="missing-image",
            )
            continue
        if guess:
            problems.add(xml, guess, kind="guessed-image", action=f"using {rel!r}")
        _append(
            imgs,
            key=rel,
            file_name=rel,
            width=rec["width"],
            height=rec["height"],
            split=splits.get(Path(rel).stem, ""),
            src=str(xml),
            where="",
        )
        for j, (name, x1, y1, x2, y2) in enumerate(rec["objects"]):
            _append(
                boxes,
                key=rel,
                class_id=class_id.get(name, -1),
                label=name,
                x1=x1 - 1,
                y1=y1 - 1,
                x2=x2,
                y2=y2,
                src=str(xml),
                where=f"object {j + 1}",
            )
    return classes, raw_images(dict(imgs)), raw_boxes(dict(boxes))


def _append(cols: dict[str, list], **values) -> None:
    for k, v in values.items():
        cols[k].append(v)


def _parse(xml: Path, problems: ProblemLog) -> dict | None:
    try:
        tree = SafeET.parse(xml, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        problems.add(xml, f"unsafe XML refused ({type(exc).__name__})", kind="bad-file")
        return None
    except (SafeET.ParseError, OSError, UnicodeDecodeError) as exc:
        problems.add(xml, f"not valid XML ({exc})", kind="bad-file")
        return None
    ann = tree.getroot()
    if ann.tag != "annotation":
        return None  # some other XML file (a VOC tree also holds e.g. config files)
    size = ann.find("size")
    objects = []
    for j, obj in enumerate(ann.iter("object")):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        coords = [
            _float(bb.findtext(t)) if bb is not None else float("nan")
            for t in ("xmin", "ymin", "xmax", "ymax")
        ]
        if not name:
            problems.add(xml, "object without a <name>", kind="bad-record", where=f"object {j + 1}")
            continue
        objects.append((name, *coords))
    return {
        "xml": xml,
        "filename": (ann.findtext("filename") or "").strip(),
        "width": _size(size.findtext("width")) if size is not None else None,
        "height": _size(size.findtext("height")) if size is not None else None,
        "objects": objects,
    }


def _size(text: str | None) -> float | str | None:
    """An image size as a number; text that is not one stays text (reported, then read from the
    image); an empty or missing element is None (not given)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _float(text: str | None) -> float:
    try:
        return float(text) if text is not None else float("nan")
    except ValueError:
        return float("nan")


class _ImageIndex:
    """Every image under the root, by file name and by stem, for resolving sloppy references."""

    def __init__(self, root: Path):
        self.root = root
        self.by_name: dict[str, list[str]] = defaultdict(list)
        self.by_stem: dict[str, list[str]] = defaultdict(list)
        for dirpath, _dirs, names in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
            for n in names:
                if is_image_file(n):
                    rel = n if rel_dir == "." else f"{rel_dir}/{n}"
                    self.by_name[n].append(rel)
                    self.by_stem[PurePosixPath(n).stem].append(rel)

    def resolve(self, xml: Path, filename: str) -> tuple[str | None, str]:
        """(the image's path relative to the root, or None; "" or why the choice is a guess).

        A guess: several images fit (the one sharing most folders with the XML is taken), or
        ``filename`` names a file with an extension and only another file of that stem exists.
        """
        xml_rel = os.path.relpath(xml, self.root).replace(os.sep, "/")
        name = PurePosixPath(filename.replace("\\", "/")).name
        if filename:
            beside = xml.parent / filename
            if beside.is_file():
                return os.path.relpath(beside, self.root).replace(os.sep, "/"), ""
        for candidates in (
            self.by_name.get(name),
            self.by_stem.get(PurePosixPath(name).stem),
            self.by_stem.get(xml.stem),
        ):
            if candidates:
                rel = _closest(candidates, xml_rel)
                if len(candidates) > 1:
                    what = f"filename {filename!r}" if filename else f"the XML's name {xml.stem!r}"
                    shown = ", ".join(sorted(candidates)[:3])
                    return rel, f"{len(candidates)} images fit {what} ({shown})"
                if PurePosixPath(name).suffix and PurePosixPath(rel).name != name:
                    return rel, f"no image named {name!r}; another file of that stem is taken"
                return rel, ""
        return None, ""


def _closest(candidates: list[str], xml_rel: str) -> str:
    """The candidate sharing the longest folder prefix with the XML file."""
    xml_parts = PurePosixPath(xml_rel).parent.parts

    def shared(c: str) -> int:
        n = 0
        for a, b in zip(PurePosixPath(c).parent.parts, xml_parts, strict=False):
            if a != b:
                break
            n += 1
        return n

    return max(sorted(candidates), key=shared)  # sorted: the same choice on every machine


def _splits(root: Path, problems: ProblemLog) -> dict[str, str]:
    """stem → split from ImageSets/Main lists (train/val/test preferred over trainval)."""
    out: dict[str, str] = {}
    for main in root.rglob("ImageSets/Main"):
        for split in ("trainval", "train", "val", "test"):
            f = main / f"{split}.txt"
            if f.is_file():
                try:
                    text = f.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    problems.add(f, f"cannot read split list ({exc})", kind="bad-file")
                    continue
                for line in text.split():
                    out[line.strip()] = split
    return out
