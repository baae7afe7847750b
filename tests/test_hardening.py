"""Bad-input catalogue (issues 7 and 12): the subcommands against broken, hostile and odd input.

Every case either works, or stops with exactly one clear message that names the file and the
problem and a non-zero exit code; never a traceback, never a hang. Bad records in otherwise usable
data are skipped or repaired with a warning naming file and record (``--strict`` makes them exit
code 2).

Who runs what: every dataset case goes through ``analyze`` and ``convert`` (with and without
``--strict``), ``evaluate`` (unusable data; bad records under ``--strict``; a representative
subset, RUN_THROUGH, to the end) and ``train`` (likewise). ``predict`` reads images, not datasets:
it runs against the image catalogue (PREDICT_IMAGES, PREDICT_SOURCES). ``export`` reads only a
checkpoint: the checkpoint cases below cover it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_MODEL_ARGS, coco_doc, write_image
from defectdet.cli import app
from defectdet.config import AugmentConfig
from defectdet.data.augment import build_transforms
from defectdet.data.dataset import BadImageWarning, DetectionDataset
from defectdet.data.formats import load_dataset
from defectdet.data.images import ImageError, load_rgb, read_size
from detector_helpers import make_checkpoint

runner = CliRunner()
TINY = [
    *TINY_MODEL_ARGS,
    "--batch-size",
    "2",
    "--epochs",
    "1",
    "--max-steps",
    "1",
]


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (SIGALRM; the tests run in the main thread)."""

    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cli(*args: object, code: int, says: tuple[str, ...] = (), seconds: int = 180):
    """Run ``defectdet ARGS``: exit ``code``, no traceback, one ``error:`` line when it fails,
    and every fragment of ``says`` in the output (stdout and stderr)."""
    with deadline(seconds):
        result = runner.invoke(app, [str(a) for a in args])
    out = result.output
    assert "Traceback" not in out, out
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception),
        out,
    )
    assert result.exit_code == code, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == (0 if code in (0, 130) else 1), out
    for fragment in says:
        assert fragment in out, (fragment, out)
    return result


# ---------------------------------------------------------------------------- hostile files
def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares ``width`` x ``height`` (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def truncated_png(path: Path) -> Path:
    """A noisy PNG cut in half: the header (and size) reads, the pixels do not decode."""
    noise = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


class Evil:
    """A pickled payload that creates ``marker`` when unpickled (it must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def small_checkpoint(run: Path) -> dict:
    """A resumable-looking checkpoint with ``run``'s config but no real weights (small, fast)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    resolved = yaml.safe_load((run / "resolved.yaml").read_text())
    return {
        "kind": "defectdet-checkpoint",
        "model": {"w": torch.zeros(2)},
        "config": config,
        **resolved,
        "optimizer": {},
        "scheduler": {},
        "scaler": {},
        "sampler": {},
        "epoch": 0,
        "state": {"epoch": 0},
        "rng": {"torch": torch.get_rng_state()},
    }


BILLION_LAUGHS_XML = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">'
        for i in range(1, 10)
    )
    + "]><annotation><filename>&lol9;</filename></annotation>"
)
EXTERNAL_ENTITY_XML = (
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    "<annotation><filename>&x;</filename></annotation>"
)
ALIAS_BOMB_YAML = "\n".join(
    [f"a0: &a0 [{','.join(['lol'] * 10)}]"]
    + [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    + ["names: *a8"]
)


# ---------------------------------------------------------------------------- dataset builders
Builder = Callable[[Path], Path]


def coco(mutate: Callable[[dict, Path], object] = lambda doc, root: None) -> Builder:
    """Images a.png (with a box) and b.png (defect-free), 64x48, then ``mutate(doc, root)``."""

    def build(root: Path) -> Path:
        write_image(root / "a.png")
        write_image(root / "b.png")
        doc = coco_doc([(1, "a.png", 64, 48), (2, "b.png", 64, 48)], [(1, 1, (5, 5, 10, 10))])
        text = mutate(doc, root)
        text = text if isinstance(text, str | bytes) else json.dumps(doc)
        (root / "ann.json").write_bytes(text.encode() if isinstance(text, str) else text)
        return root / "ann.json"

    return build


def box(**changes) -> Callable[[dict, Path], None]:
    return lambda doc, root: doc["annotations"][0].update(changes)


def extra_image(file_name: str, **fields) -> Callable[[dict, Path], None]:
    return lambda doc, root: doc["images"].append({"id": 3, "file_name": file_name, **fields})


def with_file(name: str, content: bytes | Callable[[Path], object], then=None):
    """Write ``root/name`` (bytes, or a writer called with the path) before ``then``."""

    def mutate(doc: dict, root: Path):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else content(path)
        return then(doc, root) if then else None

    return mutate


def outside(root: Path) -> Path:
    return write_image(root.parent / f"{root.name}-outside.png")


def voc(bad_xml: str | bytes, files: tuple[str, ...] = ()) -> Builder:
    """One good VOC file (a.xml) and ``bad.xml`` next to it; ``files``: more images (or, for a
    name ending in ``.txt``, a non-UTF-8 text file)."""

    def build(root: Path) -> Path:
        write_image(root / "a.png")
        for name in files:
            path = root / name
            if name.endswith(".txt"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"a\n\xff\xfe\n")
            else:
                write_image(path)
        (root / "a.xml").write_text(
            "<annotation><filename>a.png</filename><object><name>scratch</name><bndbox>"
            "<xmin>5</xmin><ymin>5</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>"
            "</annotation>"
        )
        data = bad_xml.encode() if isinstance(bad_xml, str) else bad_xml
        (root / "bad.xml").write_bytes(data)
        return root

    return build


def voc_box(file_name: str = "a.png", x1: str = "5", x2: str = "20", size: str = "") -> str:
    return (
        f"<annotation><filename>{file_name}</filename>{size}<object><name>scratch</name><bndbox>"
        f"<xmin>{x1}</xmin><ymin>5</ymin><xmax>{x2}</xmax><ymax>20</ymax></bndbox></object>"
        "</annotation>"
    )


def yolo(
    label: str | bytes = "0 0.5 0.5 0.2 0.2",
    data_yaml: str | bytes | None = "names: [a, b]",
    extra: dict[str, bytes] | None = None,
) -> Builder:
    def build(root: Path) -> Path:
        write_image(root / "images" / "a.png")
        write_image(root / "images" / "b.png")
        (root / "labels").mkdir()
        (root / "labels" / "a.txt").write_bytes(label.encode() if isinstance(label, str) else label)
        if data_yaml is not None:
            (root / "data.yaml").write_bytes(
                data_yaml.encode() if isinstance(data_yaml, str) else data_yaml
            )
        for name, content in (extra or {}).items():
            (root / name).write_bytes(content)
        return root

    return build


def csv(text: str | bytes) -> Builder:
    def build(root: Path) -> Path:
        write_image(root / "a.png")
        write_image(root / "b.png")
        (root / "ann.csv").write_bytes(text.encode() if isinstance(text, str) else text)
        return root / "ann.csv"

    return build


# name: (builder, exit code of analyze/convert/train, fragments the output must contain)
Case = tuple[Builder, int, tuple[str, ...]]


def fails(build: Builder, *says: str) -> Case:
    """Unusable input: exit code 2 and one message naming the file and the problem."""
    return build, 2, says


def warns(build: Builder, *says: str) -> Case:
    """Usable input with bad records: exit code 0, each skipped record named in a warning."""
    return build, 0, says


def doc(**top) -> Builder:
    return coco(lambda d, r: d.update(top))


def raw(text: str | bytes) -> Builder:
    return coco(lambda d, r: text)


def bad_box(message: str, **changes) -> Case:
    return warns(coco(box(**changes)), "ann.json (annotation id 1)", message)


def extra_file(name: str, content: bytes, **fields) -> Builder:
    return coco(with_file(name, content, extra_image(name, **fields)))


def link_outside(d: dict, r: Path) -> None:
    os.symlink(outside(r), r / "link.png")
    extra_image("link.png")(d, r)


def non_ascii(d: dict, r: Path) -> None:
    write_image(r / "défaut photos" / "pièce 1 ✓.png")
    extra_image("défaut photos/pièce 1 ✓.png")(d, r)


BOMB = png_header(100_000, 100_000)
BIG = {"width": 100_000, "height": 100_000}
OUT = "points outside the dataset root"
ROWS = "image,x1,y1,x2,y2,label\na.png,1,1,5,5,x\n"
NAN, INF = float("nan"), float("inf")

CASES: dict[str, Case] = {
    # COCO: files that cannot be used at all
    "coco-malformed-json": fails(raw('{"images": ['), "ann.json", "not valid JSON"),
    "coco-truncated-json": fails(coco(lambda d, r: json.dumps(d)[:70]), "ann.json", "valid JSON"),
    "coco-not-an-object": fails(raw("[1, 2]"), "ann.json", "JSON object, not list"),
    "coco-binary": fails(raw(b"\xff\xfe\x00"), "ann.json", "not valid JSON"),
    "coco-dict-for-list": fails(doc(annotations={}), "ann.json", "'annotations' must be a list"),
    "coco-empty-dataset": fails(doc(images=[], annotations=[]), "ann.json", "no usable images"),
    "coco-no-categories": fails(doc(categories=[]), "ann.json", "no categories"),
    "coco-same-class-name-twice": fails(
        doc(categories=[{"id": 1, "name": "dent"}, {"id": 2, "name": "dent"}]),
        "ann.json",
        "category names used twice: dent",
    ),
    "coco-all-images-missing": fails(
        coco(lambda d, r: [im.update(file_name="gone.png") for im in d["images"]]),
        "no usable images",
        "'gone.png' not found",
    ),
    # COCO: bad records, skipped with a warning naming file and record
    "coco-string-coordinates": bad_box("non-finite", bbox=["5", "5", "10", "10"]),
    "coco-dict-for-bbox": bad_box("non-finite", bbox={"x": 5}),
    "coco-list-for-category": bad_box("unknown class", category_id=[1]),
    "coco-nan": bad_box("non-finite", bbox=[NAN, 5, 10, 10]),
    "coco-infinite": bad_box("non-finite", bbox=[5, 5, INF, 10]),
    "coco-1e308": bad_box("non-finite", bbox=[1e308, 5, 1e308, 10]),
    "coco-minus-1e308": bad_box("mostly outside the image", bbox=[-1e308, 5, 1e308, 10]),
    "coco-int-beyond-float": bad_box("non-finite", bbox=[10**400, 5, 10, 10]),
    "coco-negative-outside": bad_box("mostly outside the image", bbox=[-50, -50, 10, 10]),
    "coco-zero-size-box": bad_box("zero or negative width/height", bbox=[5, 5, 0, 10]),
    "coco-sub-pixel-box": warns(coco(box(bbox=[5, 5, 0.001, 10]))),  # valid; converts intact
    "coco-unknown-class": bad_box("unknown class (category_id 9)", category_id=9),
    "coco-unknown-image": bad_box("annotation refers to unknown image 99", image_id=99),
    "coco-list-for-image-id": warns(coco(box(image_id=[1])), "annotations[0]", "'image_id'"),
    "coco-dict-for-image-id": warns(coco(box(image_id={"a": 1})), "annotations[0]", "'image_id'"),
    "coco-list-for-image-entry-id": warns(
        coco(lambda d, r: d["images"][0].update(id=[1])), "ann.json (images[0])", "integer 'id'"
    ),
    "coco-same-class-id-twice": warns(
        coco(lambda d, r: d["categories"].append({"id": 1, "name": "dent"})),
        "ann.json (categories[2])",
        "category id 1 is 'dent' here but 'scratch'",
    ),
    "coco-image-file-missing": warns(coco(extra_image("gone.png")), "id 3", "'gone.png' not found"),
    "coco-duplicate-image": warns(coco(extra_image("a.png")), "id 3", "duplicate image entry"),
    "coco-size-1e308": warns(
        coco(lambda d, r: d["images"][0].update(width=1e308, height=-5)),
        "ann.json (image id 1)",
        "width 1e+308 exceeds the limit",
        "height -5 is not a positive whole number",
        "[size read from the image: 64x48]",
    ),
    "coco-size-string": warns(
        coco(lambda d, r: d["images"][1].update(width="64")),
        "ann.json (image id 2)",
        "width '64' is not a number",
        "[size read from the image: 64x48]",
    ),
    "coco-size-fractional": warns(
        coco(lambda d, r: d["images"][1].update(height=47.5)),
        "ann.json (image id 2)",
        "height 47.5 is not a positive whole number",
        "[size read from the image: 64x48]",
    ),
    "coco-size-not-given": warns(  # valid: read from the header, nothing was repaired
        coco(lambda d, r: [(im.pop("width"), im.update(height=0)) for im in d["images"]])
    ),
    "coco-split-not-a-name": warns(
        coco(lambda d, r: d["images"][0].update(split=5)),
        "ann.json (image id 1)",
        "split '5' is not a name [no split]",
    ),
    "coco-zero-byte-image": warns(extra_file("z.png", b""), "id 3", "z.png: not a readable image"),
    "coco-text-as-jpg": warns(extra_file("t.jpg", b"hi"), "id 3", "t.jpg: not a readable image"),
    "coco-cut-header": warns(extra_file("h.png", BOMB[:20]), "h.png: not a readable image"),
    "coco-bomb": warns(extra_file("b0.png", BOMB), "b0.png: declared size 100000x100000 exceeds"),
    "coco-bomb-size-given": warns(extra_file("b1.png", BOMB, **BIG), "b1.png", "decompression"),
    "coco-dotdot-path": warns(
        coco(lambda d, r: outside(r) and extra_image(f"../{r.name}-outside.png")(d, r)), OUT
    ),
    "coco-absolute-path": warns(coco(lambda d, r: extra_image(str(outside(r)))(d, r)), OUT),
    "coco-symlink-outside": warns(coco(link_outside), "'link.png' is a link that " + OUT),
    "coco-class-without-instances": warns(coco()),
    "coco-non-ascii-and-spaces": warns(coco(non_ascii)),
    # Pascal VOC
    "voc-malformed-xml": warns(voc("<annotation><filename>a.png</filena"), "bad.xml", "valid XML"),
    "voc-truncated-xml": warns(voc(voc_box()[:60]), "bad.xml", "not valid XML"),
    "voc-binary": warns(voc(b"\xff\xfe\x00\x01"), "bad.xml", "not valid XML"),
    "voc-entity-expansion": warns(voc(BILLION_LAUGHS_XML), "bad.xml", "unsafe XML refused"),
    "voc-external-entity": warns(voc(EXTERNAL_ENTITY_XML), "bad.xml", "unsafe XML refused"),
    "voc-string-coordinates": warns(voc(voc_box(x1="left")), "bad.xml (object 1)", "non-finite"),
    "voc-1e308": warns(voc(voc_box(x2="1e308")), "bad.xml (object 1)", "mostly outside"),
    "voc-infinite": warns(voc(voc_box(x2="inf")), "bad.xml (object 1)", "non-finite"),
    "voc-image-missing": warns(voc(voc_box("zz.png")), "bad.xml", "no image found", "'zz.png'"),
    "voc-size-text": warns(
        voc(
            voc_box("b.png", size="<size><width>wide</width><height>48</height></size>"), ("b.png",)
        ),
        "bad.xml: width 'wide' is not a number",
        "[size read from the image: 64x48]",
    ),
    "voc-ambiguous-image": warns(
        voc(voc_box("C:\\pc\\x.png"), ("one/x.png", "two/x.png")),
        "bad.xml: 2 images fit filename",
        "[using 'one/x.png']",
    ),
    "voc-other-extension": warns(
        voc(voc_box("q.png"), ("q.jpg",)),
        "bad.xml: no image named 'q.png'",
        "[using 'q.jpg']",
    ),
    "voc-split-list-binary": warns(
        voc(voc_box("b.png"), ("b.png", "ImageSets/Main/train.txt")),
        "train.txt: cannot read split list",
    ),
    # YOLO
    "yolo-malformed-yaml": fails(yolo(data_yaml="names: [a, b"), "data.yaml", "not valid YAML"),
    "yolo-yaml-binary": fails(yolo(data_yaml=b"\xff\xfe"), "data.yaml", "not valid YAML"),
    "yolo-yaml-wrong-type": fails(yolo(data_yaml="names: a"), "data.yaml", "must be a list"),
    "yolo-yaml-dict-in-list": fails(yolo(data_yaml="names: [{a: b}]"), "data.yaml", "a list"),
    "yolo-yaml-same-name-twice": fails(yolo(data_yaml="names: [a, a]"), "data.yaml", "twice: a"),
    "yolo-yaml-id-gap": fails(yolo(data_yaml="names: {0: a, 5: b}"), "data.yaml", "must be 0..1"),
    "yolo-yaml-alias-bomb": fails(yolo(data_yaml=ALIAS_BOMB_YAML), "data.yaml", "aliases (*a0)"),
    "yolo-classes-txt-binary": fails(
        yolo(data_yaml=None, extra={"classes.txt": b"a\n\xff\xfe\n"}),
        "classes.txt",
        "not a UTF-8 text file",
    ),
    "yolo-garbage-line": warns(yolo("hi there\n0 .5 .5 .2 .2"), "a.txt (line 1)", "expected num"),
    "yolo-nan": warns(yolo("0 nan 0.5 0.2 0.2"), "a.txt (line 1)", "non-finite"),
    "yolo-1e308": warns(yolo("0 1e308 0.5 0.2 0.2"), "a.txt (line 1)", "not normalised"),
    "yolo-zero-size": warns(yolo("0 0.5 0.5 0 0.2"), "a.txt (line 1)", "zero or negative"),
    "yolo-unknown-class": warns(yolo("7 0.5 0.5 0.2 0.2"), "a.txt (line 1)", "class 'id 7'"),
    "yolo-fractional-class": warns(yolo("0.5 .5 .5 .2 .2"), "a.txt (line 1)", "not a whole num"),
    "yolo-too-few-fields": warns(yolo("0 0.5 0.5"), "a.txt (line 1)", "got 3 fields"),
    "yolo-binary-label": warns(yolo(b"\xff\xfe\x00"), "a.txt", "cannot read label file"),
    "yolo-zero-byte-image": warns(yolo(extra={"images/z.png": b""}), "z.png", "not a readable"),
    "yolo-label-without-image": warns(
        yolo(extra={"labels/c.txt": b"0 0.5 0.5 0.2 0.2\n"}), "c.txt", "label file without an image"
    ),
    # CSV
    "csv-malformed": fails(csv(ROWS + '"b.png,1,1,5,5,x\n'), "ann.csv", "not a readable CSV"),
    "csv-empty-file": fails(csv(""), "ann.csv", "not a readable CSV"),
    "csv-binary": fails(csv(b"\xff\xfe\x00garbage"), "ann.csv", "not a readable CSV"),
    "csv-missing-column": fails(csv("image,x1,y1,x2,label\n"), "ann.csv", "missing column 'y2'"),
    "csv-header-only": fails(csv(ROWS.splitlines()[0]), "ann.csv", "no usable images"),
    "csv-string-coordinates": warns(csv(ROWS + "b.png,one,1,5,5,x\n"), "line 3", "non-finite"),
    "csv-1e308": warns(csv(ROWS + "b.png,-1e308,1,1e308,5,x\n"), "line 3", "mostly outside"),
    "csv-truncated": warns(csv(ROWS + "b.png,1"), "ann.csv (line 3)", "coordinates but no label"),
    "csv-label-without-coordinates": warns(
        csv(ROWS + "b.png,1,1,,,x\n"), "ann.csv (line 3)", "a label but no x2, y2"
    ),
    "csv-too-many-fields": warns(
        csv(ROWS + "b.png,1,1,5,5,x,7\n"), "ann.csv (line 3)", "7 fields, the header 6"
    ),
    "csv-split-conflict": warns(
        csv("image,x1,y1,x2,y2,label,split\na.png,1,1,5,5,x,train\na.png,2,2,6,6,x,val\n"),
        "ann.csv (line 3)",
        "in split 'val' here but in 'train' on line 2 [kept in split 'train']",
    ),
    "csv-blank-lines": warns(
        csv(ROWS + "\n\n" + "gone.png,1,1,5,5,x\n"), "ann.csv (line 5)", "'gone.png' not found"
    ),
    "csv-image-only-row": warns(csv(ROWS + "b.png\n")),  # valid: a defect-free image
    "csv-missing-image": warns(csv(ROWS + "gone.png,1,1,5,5,x\n"), "line 3", "'gone.png' not"),
    "csv-escaping-path": warns(csv(ROWS + "../../etc/passwd,1,1,5,5,x\n"), "line 3", OUT),
}


@pytest.fixture(params=sorted(CASES))
def case(request, tmp_path: Path):
    build, code, says = CASES[request.param]
    root = tmp_path / "data"
    root.mkdir()
    return build(root), code, says


def test_analyze_and_convert(case, tmp_path: Path):
    data, code, says = case
    cli("analyze", data, code=code, says=says)
    if code == 0 and says:  # a warning case: --strict makes it fatal, naming the same record
        cli("analyze", data, "--strict", code=2, says=("--strict", *says))
    out = data if data.is_dir() else data.parent
    cli("convert", data, out / "converted.json", code=code, says=says)
    if code == 0:  # what convert writes is a clean, validated dataset: it reloads as is
        assert len(load_dataset(out / "converted.json").problems) == 0
    else:
        assert not (out / "converted.json").exists()


@pytest.mark.parametrize("name", [n for n, (_, code, _) in CASES.items() if code != 0])
def test_train_refuses_unusable_data_before_building_anything(name: str, tmp_path: Path):
    build, code, says = CASES[name]
    (tmp_path / "data").mkdir()
    data = build(tmp_path / "data")
    cli("train", data, *TINY, "--project", tmp_path / "runs", code=code, says=says)
    assert not (tmp_path / "runs").exists()


def test_sizes_that_no_integer_holds_are_read_from_the_image(tmp_path: Path):
    cat = load_dataset(CASES["coco-size-1e308"][0](tmp_path))
    assert cat.images[["width", "height"]].values.tolist() == [[64, 48], [64, 48]]
    (problem,) = cat.problems  # repaired, and said so
    assert (problem.kind, problem.where) == ("bad-size", "image id 1")
    assert problem.action == "size read from the image: 64x48"


# ---------------------------------------------------------------------------- evaluate, train
#: Warning cases that ``evaluate`` runs to the end, model and all. Every other case stops at the
#: data (unusable data, or any bad record under --strict), which costs next to nothing; running
#: each of the ~90 cases through a model would cost 1 to 1.5 s each on 2 CPU cores. The subset
#: takes each reader (COCO, VOC, YOLO, CSV) through a skipped record, plus an unreadable image
#: among good ones, a repaired image size and non-ASCII paths with spaces (about 8 s).
RUN_THROUGH = (
    "coco-nan",
    "coco-zero-byte-image",
    "coco-size-1e308",
    "coco-non-ascii-and-spaces",
    "voc-1e308",
    "yolo-garbage-line",
    "csv-truncated",
)
#: Warning cases that ``train`` runs to the end (one step): one per reader, each leaving at least
#: the two images a train/val split needs (csv-truncated and voc-1e308 leave one), 3 to 5 s each.
TRAIN_THROUGH = (
    "coco-zero-byte-image",
    "coco-size-1e308",
    "voc-size-text",
    "yolo-garbage-line",
    "csv-string-coordinates",
)
#: A class each format's cases have (the checkpoint's classes must be in the data).
CLASS_OF = {"coco": "scratch", "voc": "scratch", "yolo": "a", "csv": "x"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """An untrained tiny checkpoint per format (made in well under a second each)."""
    tmp = tmp_path_factory.mktemp("weights")
    return {f: make_checkpoint(tmp / f"{f}.pt", classes=(c,)) for f, c in CLASS_OF.items()}


def build_case(name: str, tmp_path: Path) -> tuple[Path, int, tuple[str, ...]]:
    build, code, says = CASES[name]
    (tmp_path / "data").mkdir()
    return build(tmp_path / "data"), code, says


@pytest.mark.parametrize(
    "name", [n for n, (_, code, says) in CASES.items() if code or says or n in RUN_THROUGH]
)
def test_evaluate_on_the_catalogue(name: str, tmp_path: Path, checkpoints: dict[str, Path]):
    data, code, says = build_case(name, tmp_path)
    weights = checkpoints[name.split("-")[0]]
    args = ("evaluate", data, "--weights", weights, "--workers", "0", "--device", "cpu")
    if code != 0:
        cli(*args, code=code, says=says)
    elif says:
        cli(*args, "--strict", code=2, says=("--strict", *says))
    if name in RUN_THROUGH:
        cli(*args, code=0, says=(*says, "mAP"))


@pytest.mark.parametrize("name", [n for n, (_, code, says) in CASES.items() if not code and says])
def test_train_strict_stops_at_a_bad_record_before_building_anything(name: str, tmp_path: Path):
    data, _, says = build_case(name, tmp_path)
    runs = tmp_path / "runs"
    cli("train", data, *TINY, "--strict", "--project", runs, code=2, says=("--strict", *says))
    assert not runs.exists()


@pytest.mark.parametrize("name", TRAIN_THROUGH)
def test_train_runs_through_bad_records(name: str, tmp_path: Path):
    data, _, says = build_case(name, tmp_path)
    runs = tmp_path / "runs"
    cli("train", data, *TINY, "--project", runs, code=0, says=(*says, "done"))
    assert (runs / "exp" / "weights" / "last.pt").is_file()


# ---------------------------------------------------------------------------- predict
def float_rgb_tiff(path: Path) -> None:
    assert cv2.imwrite(str(path), np.full((48, 64, 3), 0.5, np.float32))


#: Image files predict must skip by name (beside a good image), and what it says about each.
PREDICT_IMAGES: dict[str, tuple[bytes | Callable[[Path], object], str]] = {
    "zero-byte.png": (b"", "not a readable image"),
    "text.jpg": (b"not an image at all", "not a readable image"),
    "gif-named.png": (b"GIF89a not really", "not a readable image"),
    "cut-header.png": (png_header(64, 48)[:20], "not a readable image"),
    "bomb.png": (BOMB, "decompression bomb"),
    "bomb-one-row.png": (png_header(2**31 - 1, 1), "decompression bomb"),
    "truncated-pixels.png": (truncated_png, "cannot decode image"),
    "float-rgb.tif": (float_rgb_tiff, "not a readable image"),
}


@pytest.mark.parametrize("name", sorted(PREDICT_IMAGES))
def test_predict_skips_a_bad_image_by_name(name: str, tmp_path: Path, checkpoints: dict[str, Path]):
    content, message = PREDICT_IMAGES[name]
    src = tmp_path / "parts"
    write_image(src / "good.png")
    path = src / name
    path.write_bytes(content) if isinstance(content, bytes) else content(path)
    args = [src, "--weights", checkpoints["coco"], "--out", tmp_path / "out", "--workers", "0"]
    result = cli("predict", *args, "--device", "cpu", "--json", code=0, says=(name, message))
    summary = json.loads(result.stdout)
    assert (summary["images"], summary["skipped"], summary["skipped_files"]) == (1, 1, [name])


def test_predict_reads_every_awkward_image_kind(tmp_path: Path, checkpoints: dict[str, Path]):
    src = tmp_path / "pièces à vérifier"
    for name, writer in IMAGE_MODES.items():
        src.mkdir(exist_ok=True)
        writer(src / name)
    args = [src, "--weights", checkpoints["coco"], "--out", tmp_path / "out", "--workers", "0"]
    result = cli("predict", *args, "--device", "cpu", "--json", code=0)
    summary = json.loads(result.stdout)
    assert (summary["images"], summary["skipped"]) == (len(IMAGE_MODES), 0)


def list_file(text: bytes) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        write_image(root / "good.png")
        (root / "list.txt").write_bytes(text)
        return root / "list.txt"

    return build


#: SOURCE arguments predict cannot use: exit 2 and one message, before any model is loaded.
PREDICT_SOURCES: dict[str, tuple[Callable[[Path], Path | str], str]] = {
    "missing-path": (lambda r: r / "nowhere", "no such image, folder, glob match or list file"),
    "empty-folder": (lambda r: r, "no images found"),
    "folder-without-images": (
        lambda r: (r / "notes.txt").write_text("x") and r,
        "no images found",
    ),
    "glob-matching-nothing": (lambda r: f"{r}/*.png", "no images found"),
    "empty-list-file": (list_file(b"# nothing\n\n"), "the list of images is empty"),
    "binary-list-file": (list_file(b"\xff\xfe\x00"), "cannot read the list of images"),
}


@pytest.mark.parametrize("name", sorted(PREDICT_SOURCES))
def test_predict_refuses_an_unusable_source(
    name: str, tmp_path: Path, checkpoints: dict[str, Path]
):
    build, message = PREDICT_SOURCES[name]
    (tmp_path / "src").mkdir()
    source = build(tmp_path / "src")
    args = [source, "--weights", checkpoints["coco"], "--out", tmp_path / "out"]
    cli("predict", *args, code=2, says=(str(source), message))
    assert not (tmp_path / "out").exists()


def test_predict_skips_a_listed_image_that_is_missing(tmp_path: Path, checkpoints):
    source = list_file(b"good.png\ngone.png\n")(tmp_path)
    args = [source, "--weights", checkpoints["coco"], "--out", tmp_path / "out", "--workers", "0"]
    result = cli("predict", *args, "--device", "cpu", "--json", code=0, says=("gone.png",))
    assert json.loads(result.stdout)["skipped_files"] == ["gone.png"]


def test_a_class_without_instances_and_defect_free_images_are_counted(tmp_path: Path):
    cli("analyze", coco()(tmp_path), "--json", tmp_path / "r.json", code=0)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_images"] == 2 and report["num_background_images"] == 1
    assert {c["name"]: c["instances"] for c in report["classes"]} == {"scratch": 1, "crack": 0}


# ---------------------------------------------------------------------------- train --config
CONFIGS = {
    "malformed": ("optim: {epochs: 2", "not valid YAML"),
    "not-a-mapping": ("- 1\n- 2", "top level must be a mapping"),
    "unknown-option": ("optim: {epoch: 2}", "unknown option(s) epoch in optim"),
    "number-keys": ("1: 2\noptim: {3: 4}", "unknown option(s) 1 in TrainConfig"),
    "string-for-number": ("optim: {epochs: many}", "optim.epochs: expected a number"),
    "list-for-section": ("optim: [1, 2]", "optim: expected a mapping"),
    "dict-for-list": ("optim: {step_milestones: {a: 1}}", "optim.step_milestones: expected a list"),
    "nan": ("optim: {lr: .nan}", "optim.lr: expected a finite number"),
    "infinite-int": ("optim: {epochs: .inf}", "optim.epochs: expected a finite number"),
    "binary": ("\udcff\udcfe", "not a UTF-8 text file"),
    "alias-bomb": (ALIAS_BOMB_YAML.replace("names", "data"), "aliases (*a0) are not allowed"),
    "python-object": ("data: !!python/object/apply:os.system ['touch {marker}']", "not valid YAML"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_train_config_file_errors(name: str, tmp_path: Path):
    text, message = CONFIGS[name]
    marker = tmp_path / "PWNED"
    (tmp_path / "bad.yaml").write_bytes(
        text.replace("{marker}", str(marker)).encode("utf-8", "surrogateescape")
    )
    args = ["--config", tmp_path / "bad.yaml", "--project", tmp_path / "runs"]
    cli("train", *args, code=2, says=(str(tmp_path / "bad.yaml"), message), seconds=20)
    assert not marker.exists() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- images
@pytest.mark.parametrize("ext", ["jpg", "png", "webp", "tiff"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_boxes_and_pixels_follow_the_displayed_image(
    tmp_path: Path, ext: str, orientation: int
):
    """A photo stored 40x20 with an EXIF orientation is labelled as a viewer displays it; the
    catalogue's size, the box and the pixels load_rgb returns all agree with that display."""
    stored = np.full((20, 40, 3), 60, np.uint8)
    stored[3:9, 28:36] = (255, 0, 0)  # a red marker near the top-right corner as stored
    methods = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }
    shown = Image.fromarray(stored)
    shown = np.asarray(shown.transpose(methods[orientation]) if orientation > 1 else shown)
    ys, xs = np.nonzero(shown[..., 0] > 200)
    label = [
        int(xs.min()) - 1,
        int(ys.min()) - 1,
        int(xs.max() - xs.min()) + 3,
        int(ys.max() - ys.min()) + 3,
    ]
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / f"p.{ext}", exif=exif.tobytes(), quality=95)
    doc = coco_doc([(1, f"p.{ext}", 0, 0)], [(1, 1, label)])  # no size: read from the header
    (tmp_path / "ann.json").write_text(json.dumps(doc))

    cat = load_dataset(tmp_path / "ann.json")
    assert len(cat.problems) == 0  # nothing clipped or dropped: the box is inside
    size = (20, 40) if orientation >= 5 else (40, 20)
    assert read_size(tmp_path / f"p.{ext}") == size
    assert tuple(cat.images[["width", "height"]].iloc[0]) == size
    x1, y1, x2, y2 = cat.boxes[["x1", "y1", "x2", "y2"]].iloc[0]
    pixels = load_rgb(tmp_path / f"p.{ext}")
    assert pixels.shape == (size[1], size[0], 3)
    red = np.argwhere((pixels[..., 0] > 200) & (pixels[..., 1] < 80))
    assert len(red) > 10
    assert (red[:, 1] >= x1).all() and (red[:, 1] < x2).all()
    assert (red[:, 0] >= y1).all() and (red[:, 0] < y2).all()
    # ... and through the training pipeline (resize to 64 px, pad): still on the marker.
    transforms = build_transforms(AugmentConfig(augment="none"), 64, train=False)
    image, target = DetectionDataset(cat, 64, transforms)[0]
    bx1, by1, bx2, by2 = target["boxes"][0].tolist()
    red = np.argwhere(((image[0] > 0.8) & (image[1] < 0.3)).numpy())
    assert (red[:, 1] >= bx1 - 1).all() and (red[:, 1] <= bx2 + 1).all()
    assert (red[:, 0] >= by1 - 1).all() and (red[:, 0] <= by2 + 1).all()


IMAGE_MODES: dict[str, Callable[[Path], object]] = {
    "gray.png": lambda p: Image.new("L", (40, 30), 90).save(p),
    "bilevel.png": lambda p: Image.new("1", (40, 30), 1).save(p),
    "gray16.png": lambda p: Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(p),
    "gray16.tif": lambda p: Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(p),
    "float.tif": lambda p: Image.fromarray(np.full((30, 40), 0.5, np.float32)).save(p),
    "rgba.png": lambda p: Image.new("RGBA", (40, 30), (200, 10, 10, 0)).save(p),
    "gray-alpha.png": lambda p: Image.new("LA", (40, 30), (90, 128)).save(p),
    "palette.png": lambda p: Image.new("RGB", (40, 30), (200, 10, 10)).convert("P").save(p),
    "cmyk.jpg": lambda p: Image.new("CMYK", (40, 30), (0, 200, 200, 0)).save(p),
    "cmyk.tif": lambda p: Image.new("CMYK", (40, 30), (0, 200, 200, 0)).save(p),
    "plain.bmp": lambda p: Image.new("RGB", (40, 30), (9, 9, 9)).save(p),
}


#: The RGB value each IMAGE_MODES file loads to, by the one rule of ``defectdet.data.images``
#: (16-bit: round(v / 257); float in 0..1: v * 255; 1-bit: 255; alpha dropped), and how far off
#: it may be (JPEG is lossy and decoders convert CMYK slightly differently).
MODE_PIXELS: dict[str, tuple[tuple[int, int, int] | None, int]] = {
    "gray.png": ((90, 90, 90), 0),
    "bilevel.png": ((255, 255, 255), 0),
    "gray16.png": ((156, 156, 156), 0),  # 40000 / 257 = 155.6
    "gray16.tif": ((156, 156, 156), 0),
    "float.tif": ((128, 128, 128), 0),  # 0.5 * 255 = 127.5
    "rgba.png": ((200, 10, 10), 0),
    "gray-alpha.png": ((90, 90, 90), 0),
    "palette.png": (None, 0),  # dithered: Pillow's own palette lookup, pixel by pixel
    "cmyk.jpg": ((255, 55, 55), 2),
    "cmyk.tif": ((255, 55, 55), 0),
    "plain.bmp": ((9, 9, 9), 0),
}


@pytest.mark.parametrize("name", sorted(IMAGE_MODES))
def test_image_modes_load_as_8bit_rgb(tmp_path: Path, name: str):
    IMAGE_MODES[name](tmp_path / name)
    assert read_size(tmp_path / name) == (40, 30)
    pixels = load_rgb(tmp_path / name)
    assert pixels.shape == (30, 40, 3) and pixels.dtype == np.uint8
    value, tolerance = MODE_PIXELS[name]
    if value is None:
        with Image.open(tmp_path / name) as im:
            value = np.asarray(im.convert("RGB"))
    assert np.abs(pixels.astype(int) - value).max() <= tolerance, pixels[0, 0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable image"),
        (b"GIF89a not really", "not a readable image"),
        (png_header(64, 48)[:20], "not a readable image"),
        (png_header(100_000, 100_000), "decompression bomb"),
        (png_header(2**31 - 1, 1), "decompression bomb"),
    ],
)
def test_unreadable_images_are_refused_without_decoding(tmp_path: Path, content, message):
    (tmp_path / "x.png").write_bytes(content)
    with deadline(10), pytest.raises(ImageError, match=message):
        load_rgb(tmp_path / "x.png")
    with pytest.raises(ImageError, match=r"x\.png"):
        read_size(tmp_path / "x.png")


def test_truncated_pixels_are_refused_with_the_file_named(tmp_path: Path):
    path = truncated_png(tmp_path / "cut.png")
    assert read_size(path) == (64, 48)  # the header is intact...
    with pytest.raises(ImageError, match=r"cut\.png: cannot decode image"):
        load_rgb(path)  # ...the pixels are not


# ---------------------------------------------------------------------------- train, predict
def messy_dataset(root: Path) -> Path:
    """Usable data with every awkward image kind, in a folder with spaces and non-ASCII."""
    root = root / "pièces défauts 2024"
    files = {
        "photos/gray ü.png": IMAGE_MODES["gray.png"],
        "photos/gray16.png": IMAGE_MODES["gray16.png"],
        "photos/rgba.png": IMAGE_MODES["rgba.png"],
        "photos/palette.png": IMAGE_MODES["palette.png"],
        "photos/cmyk.jpg": IMAGE_MODES["cmyk.jpg"],
        "photos/float.tif": IMAGE_MODES["float.tif"],
        "photos/cut.png": truncated_png,
    }
    for name, writer in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        writer(root / name)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), 80).save(root / "photos" / "exif6.jpg", exif=exif.tobytes())
    for i in range(4):
        write_image(root / "photos" / f"ok {i}.png", 40, 30, value=40 * i)
    names = sorted(str(p.relative_to(root)) for p in (root / "photos").iterdir())
    images = [(i + 1, n, 0, 0) for i, n in enumerate(names)]
    boxes = [(i + 1, 1 + i % 2, (4, 4, 10 + i, 10)) for i in range(len(names))]
    (root / "ann.json").write_text(json.dumps(coco_doc(images, boxes)))
    return root / "ann.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 1-step CLI run on the messy dataset; its weights serve the predict cases."""
    tmp = tmp_path_factory.mktemp("trained")
    data = messy_dataset(tmp)
    cli("analyze", data, code=0)
    cli("train", data, *TINY, "--project", tmp / "runs", code=0, says=("done",))
    return tmp / "runs" / "exp"


@pytest.mark.slow
def test_train_on_every_awkward_image_kind(trained: Path):
    assert (trained / "weights" / "best.pt").stat().st_size > 0
    assert (trained / "weights" / "last.pt").stat().st_size > 0
    # The truncated image passed the header check; reading it for training skips it by name.
    cat = load_dataset(trained.parent.parent / "pièces défauts 2024" / "ann.json")
    assert len(cat.problems) == 0 and cat.num_images == 12
    dataset = DetectionDataset(cat, 64, build_transforms(AugmentConfig(augment="none"), 64, False))
    row = cat.images["file_name"].tolist().index("photos/cut.png")
    with pytest.warns(BadImageWarning, match=r"skipping unreadable image photos/cut\.png"):
        image, target = dataset[row]
    assert target["image_id"] != cat.images["image_id"].iloc[row] and image.shape == (3, 64, 64)


@pytest.mark.slow
def test_predict_skips_corrupt_images_among_good_ones(trained: Path, tmp_path: Path):
    src = tmp_path / "parts à vérifier"
    for i in range(2):
        write_image(src / f"good {i}.png")
    (src / "empty.png").write_bytes(b"")
    (src / "text.jpg").write_text("not an image")
    (src / "bomb.png").write_bytes(png_header(100_000, 100_000))
    truncated_png(src / "cut.png")
    args = [src, "--weights", trained / "weights" / "best.pt", "--out", tmp_path / "out"]
    says = ("empty.png", "text.jpg", "bomb.png", "decompression bomb", "cut.png")
    result = cli("predict", *args, "--workers", "0", "--device", "cpu", "--json", code=0, says=says)
    summary = json.loads(result.stdout)
    assert summary["images"] == 2 and summary["skipped"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "resume", "predict", "evaluate", "export"])
def test_a_checkpoint_carrying_code_is_refused_and_never_runs(
    command: str, trained: Path, tmp_path: Path
):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "run" / "weights" / "last.pt"
    evil.parent.mkdir(parents=True)
    torch.save(small_checkpoint(trained) | {"metrics": {"note": [Evil(marker)]}}, evil)
    data = trained.parent.parent / "pièces défauts 2024" / "ann.json"
    args = {
        "train": ["train", data, *TINY, "--weights", evil, "--project", tmp_path / "runs"],
        "resume": ["train", "--resume", tmp_path / "run"],
        "predict": ["predict", data.parent / "photos", "--weights", evil, "--out", tmp_path / "p"],
        "evaluate": ["evaluate", data, "--weights", evil, "--workers", "0"],
        "export": ["export", "--weights", evil, "--out", tmp_path / "m.onnx"],
    }[command]
    cli(*args, code=3, says=(str(evil), "pickled Python objects", "refusing"))
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda ck, p: p.write_bytes(b""), "empty or truncated"),
        (lambda ck, p: p.write_bytes(p.read_bytes()[:300]), "not a readable defectdet checkpoint"),
        (
            lambda ck, p: torch.save({k: v for k, v in ck.items() if k != "config"}, p),
            "saved config",
        ),
        (lambda ck, p: torch.save(ck | {"config": [1]}, p), "saved config: expected a mapping"),
        (
            lambda ck, p: torch.save(ck | {"config": ck["config"] | {"optim": {"epochs": "x"}}}, p),
            "config.optim.epochs",
        ),
        (
            lambda ck, p: torch.save({k: v for k, v in ck.items() if k != "optimizer"}, p),
            "not a resumable checkpoint",
        ),
        (lambda ck, p: torch.save(ck, p), "cannot resume from"),  # weights that do not fit
        (lambda ck, p: torch.save(ck | {"model": [1]}, p), "expected a dict with a 'model'"),
    ],
)
def test_resume_from_a_damaged_checkpoint(trained: Path, tmp_path: Path, damage, message):
    path = tmp_path / "run" / "weights" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save(small_checkpoint(trained), path)
    damage(small_checkpoint(trained), path)
    cli("train", "--resume", tmp_path / "run", code=3, says=(str(path.parent.parent), message))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_an_output_folder_that_is_a_file(command: str, trained: Path, tmp_path: Path):
    (tmp_path / "taken").write_text("an earlier file")
    data = trained.parent.parent / "pièces défauts 2024" / "ann.json"
    weights = ["--weights", trained / "weights" / "best.pt", "--workers", "0"]
    args = {
        "predict": ["predict", data.parent / "photos", *weights, "--out", tmp_path / "taken"],
        "evaluate": ["evaluate", data, *weights, "--plots", tmp_path / "taken"],
    }[command]
    cli(*args, code=1, says=(str(tmp_path / "taken"),))
    assert (tmp_path / "taken").read_text() == "an earlier file"
