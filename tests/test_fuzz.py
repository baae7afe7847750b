"""Property-based fuzzing (issue 7): whatever a COCO, YOLO, CSV or VOC file holds, reading it gives
a valid catalogue or the tool's own error, nothing else; and the box transforms keep every box
inside the output image with a positive size."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_image
from defectdet.config import AugmentConfig
from defectdet.data.augment import PRESETS, build_transforms
from defectdet.data.catalog import Catalog
from defectdet.data.formats import load_dataset
from defectdet.errors import DefectdetError

# The tally fixture is meant to accumulate over a whole run, not to be reset per input.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples every run: the share checks below cannot flake
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def check(catalog: Catalog) -> None:
    """The catalogue's promises (see defectdet.data.catalog)."""
    images, boxes = catalog.images, catalog.boxes
    assert images["image_id"].is_unique and len(images) > 0
    assert (images["width"] >= 1).all() and (images["height"] >= 1).all()
    assert len(set(catalog.classes)) == len(catalog.classes)
    root = catalog.root.resolve()
    for name in images["file_name"]:
        assert (root / name).resolve().is_relative_to(root), name
    xyxy = boxes[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)
    size = images.set_index("image_id").loc[boxes["image_id"], ["width", "height"]].to_numpy()
    assert np.isfinite(xyxy).all()
    assert (xyxy[:, 0] < xyxy[:, 2]).all() and (xyxy[:, 1] < xyxy[:, 3]).all()
    assert (xyxy[:, :2] >= 0).all()
    assert (xyxy[:, 2] <= size[:, 0]).all() and (xyxy[:, 3] <= size[:, 1]).all()
    assert boxes["class_id"].between(0, catalog.num_classes - 1).all()
    json.dumps(catalog.to_coco(), allow_nan=False)  # convert can always write it


TALLY: Counter = Counter()
"""Outcomes of the current fuzz run: ``refused``, ``clean`` or ``repaired`` (loaded with
problems reported: the validation code ran and found something)."""


def read(path: Path, **kwargs) -> Catalog | None:
    """Load; the tool's own errors are an allowed outcome, anything else fails the test."""
    try:
        catalog = load_dataset(path, **kwargs)
    except DefectdetError:
        TALLY["refused"] += 1
        return None
    check(catalog)
    TALLY["repaired" if len(catalog.problems) else "clean"] += 1
    return catalog


@pytest.fixture
def tally():
    """Checks, after a reader's whole fuzz run, that the generator did not merely produce
    garbage the reader refuses: a share of the inputs loaded, some with problems reported."""
    TALLY.clear()
    yield TALLY
    total = sum(TALLY.values())
    assert total >= 20, TALLY
    assert TALLY["clean"] + TALLY["repaired"] >= 0.15 * total, TALLY  # reached validation
    assert TALLY["repaired"] >= 1, TALLY  # and validation found something to report


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two real images (64x48); each example writes its annotation files next to them."""
    root = tmp_path_factory.mktemp("fuzz")
    for where in ("", "images/"):
        write_image(root / f"{where}a.png")
        write_image(root / f"{where}b.png")
    return root


def to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8, on purpose


# ---------------------------------------------------------------------------- COCO
ODD_NUMBERS = st.sampled_from([10**400, -(10**30), 1e308, -1e308, math.nan, math.inf, -0.0, 0.5])
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6) | ODD_NUMBERS
)
ANY_JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=8,
)


def field(plausible: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a plausible value (so deep code runs), sometimes any JSON value at all."""
    return st.one_of(plausible, plausible, ANY_JSON)


def mostly(plausible: st.SearchStrategy, other: st.SearchStrategy, odds: int = 4):
    """``plausible`` in ``odds - 1`` of ``odds`` draws, else ``other`` (an explicit weight:
    ``one_of`` alone favours its simplest branch)."""
    return st.integers(1, odds).flatmap(lambda k: other if k == 1 else plausible)


NAMES = st.sampled_from(
    [
        "a.png",
        "b.png",
        "images/a.png",
        "gone.png",
        "../a.png",
        "/etc/hosts",
        "",
        ".",
        "a.png/",
        "./b.png",
        "images\\b.png",
        "a.png\x00",
    ]
)
NUMBER = st.integers(-20, 100) | st.floats(-1e3, 1e3) | ODD_NUMBERS
IMAGE = st.fixed_dictionaries(
    {"id": field(st.integers(0, 4)), "file_name": field(NAMES)},
    optional={
        "width": field(st.sampled_from([64, 32, 0, -1])),
        "height": field(NUMBER),
        "split": ANY_JSON,
    },
)
ANNOTATION = st.fixed_dictionaries(
    {
        "image_id": field(st.integers(0, 4)),
        "category_id": field(st.integers(0, 3)),
        "bbox": field(st.lists(NUMBER, min_size=4, max_size=4)),
    },
    optional={"id": ANY_JSON},
)
CATEGORY = st.fixed_dictionaries(
    {
        "id": field(st.integers(0, 3)),
        "name": field(st.sampled_from(["x", "y", "z"]) | st.text(max_size=3)),
    }
)
GOOD_IMAGE, GOOD_CAT = {"id": 1, "file_name": "a.png"}, {"id": 1, "name": "x"}


def _after(good: dict):
    return lambda items: [good, *items]


_DOC = st.fixed_dictionaries(
    {
        # A good record first, mostly: the fuzzed ones then meet the validation code.
        "images": mostly(st.lists(field(IMAGE), max_size=5).map(_after(GOOD_IMAGE)), ANY_JSON),
        "categories": mostly(st.lists(field(CATEGORY), max_size=4).map(_after(GOOD_CAT)), ANY_JSON),
    },
    optional={"annotations": field(st.lists(field(ANNOTATION), max_size=8))},
)
# Mostly a COCO-shaped document (so the validation code runs), sometimes any JSON at all.
COCO_DOC = mostly(_DOC, ANY_JSON)


@FUZZ
@given(doc=COCO_DOC, check_images=st.booleans())
def test_coco_reader(folder: Path, tally, doc, check_images: bool):
    path = folder / "ann.json"
    path.write_bytes(to_bytes(json.dumps(doc)))
    catalog = read(path, check_images=check_images)
    if catalog is not None:  # and what convert would write reads back as it is
        (folder / "round.json").write_text(json.dumps(catalog.to_coco()))
        again = read(folder / "round.json", check_images=check_images)
        assert again is not None and len(again.problems) == 0
        assert len(again.boxes) == len(catalog.boxes) and again.classes == catalog.classes


@FUZZ
@given(text=st.text(max_size=300))
def test_coco_reader_arbitrary_text(folder: Path, text: str):
    (folder / "ann.json").write_bytes(to_bytes(text))
    read(folder / "ann.json")


# ---------------------------------------------------------------------------- YOLO
TOKENS = st.sampled_from(
    [
        "0",
        "1",
        "2",
        "-1",
        "0.5",
        ".2",
        "1.5",
        "1e308",
        "-1e308",
        "nan",
        "inf",
        "-0",
        "0x1",
        "1_0",
        "",
        "1e-320",
        "٣",
    ]
)
LABEL_LINE = st.lists(TOKENS | st.floats().map(repr) | st.text(max_size=3), max_size=9)
LABELS = st.lists(LABEL_LINE.map(" ".join), max_size=5).map("\n".join) | st.text(max_size=80)
DATA_YAML = st.sampled_from(["names: [a, b]", "names: {0: a, 1: b}", "names: [a]"]) | st.text(
    max_size=40
)


@pytest.fixture(scope="module")
def yolo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("yolo")
    write_image(root / "images" / "a.png")
    write_image(root / "images" / "b.png")
    (root / "labels").mkdir()
    return root


@FUZZ
@given(label=LABELS, data_yaml=DATA_YAML)
def test_yolo_reader(yolo_root: Path, tally, label: str, data_yaml: str):
    (yolo_root / "labels" / "a.txt").write_bytes(to_bytes(label))
    (yolo_root / "data.yaml").write_bytes(to_bytes(data_yaml))
    read(yolo_root)


# ---------------------------------------------------------------------------- CSV
CELL = NAMES | TOKENS | st.text(max_size=5) | st.sampled_from(["a", "b", '"', "'", ",", " "])
HEADERS = st.sampled_from(
    [
        "image,x1,y1,x2,y2,label",
        "filename,xmin,ymin,xmax,ymax,class,split",
        "image,x1,y1,x2,y2",
        "IMAGE , X1,y1,x2,y2,label",
    ]
)
# Rows mostly start with a real image name and carry label-like and number-like cells.
ROW = st.tuples(NAMES, st.lists(CELL, max_size=7)).map(lambda r: ",".join([r[0], *r[1]]))
ROWS = st.lists(mostly(ROW, st.lists(CELL, max_size=8).map(",".join)), max_size=6)


@FUZZ
@given(header=mostly(HEADERS, st.text(max_size=20)), rows=ROWS)
def test_csv_reader(folder: Path, tally, header: str, rows: list[str]):
    good = ["a.png,1,1,9,9,x"] if "x1" in header.lower() else []  # one good row, mostly
    (folder / "ann.csv").write_bytes(to_bytes("\n".join([header, *good, *rows])))
    read(folder / "ann.csv")


# ---------------------------------------------------------------------------- VOC
TAG_TEXT = st.one_of(NAMES, TOKENS, st.text(max_size=8).map(escape), st.text(max_size=8))
OBJECT = st.fixed_dictionaries({t: TAG_TEXT for t in ("name", "xmin", "ymin", "xmax", "ymax")})


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """a.png and b.png, and a good b.xml beside the fuzzed a.xml."""
    root = tmp_path_factory.mktemp("voc")
    write_image(root / "a.png")
    write_image(root / "b.png")
    (root / "b.xml").write_text(
        "<annotation><filename>b.png</filename><object><name>x</name><bndbox><xmin>2</xmin>"
        "<ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    return root


@FUZZ
@given(file_name=TAG_TEXT, width=TAG_TEXT, height=TAG_TEXT, objects=st.lists(OBJECT, max_size=3))
def test_voc_reader(voc_root: Path, tally, file_name: str, width: str, height: str, objects: list):
    parts = [
        f"<annotation><filename>{file_name}</filename>"
        f"<size><width>{width}</width><height>{height}</height></size>"
    ]
    for o in objects:
        parts.append(
            f"<object><name>{o['name']}</name><bndbox>"
            + "".join(f"<{t}>{o[t]}</{t}>" for t in ("xmin", "ymin", "xmax", "ymax"))
            + "</bndbox></object>"
        )
    (voc_root / "a.xml").write_bytes(to_bytes("".join(parts) + "</annotation>"))
    read(voc_root)


# ---------------------------------------------------------------------------- box transforms
@st.composite
def image_and_boxes(draw):
    w, h = draw(st.integers(1, 90)), draw(st.integers(1, 90))

    def span(length: int) -> tuple[float, float]:
        edge = st.sampled_from([0.0, float(length)])  # boxes touching the border, often
        a = draw(edge | st.floats(0, length))
        b = draw(edge | st.floats(0, length))
        lo, hi = min(a, b), max(a, b)
        return (lo, hi) if hi - lo > 1e-3 else (0.0, float(length))

    boxes = []
    for _ in range(draw(st.integers(0, 6))):
        (x1, x2), (y1, y2) = span(w), span(h)
        boxes.append((x1, y1, x2, y2))
    return w, h, np.array(boxes, dtype=np.float64).reshape(-1, 4)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scene=image_and_boxes(),
    preset=st.sampled_from(PRESETS),
    rotate90=st.booleans(),
    train=st.booleans(),
    size=st.sampled_from([32, 64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_box_transforms_keep_boxes_inside_with_positive_size(
    scene, preset: str, rotate90: bool, train: bool, size: int, seed: int
):
    w, h, boxes = scene
    pipeline = build_transforms(AugmentConfig(augment=preset, rotate90=rotate90), size, train)
    pipeline.set_random_seed(seed)
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = pipeline(image=image, bboxes=boxes, labels=np.arange(len(boxes)))
    assert out["image"].shape == (size, size, 3)
    got = np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4)
    assert len(got) == len(out["labels"]) <= len(boxes)
    assert np.isfinite(got).all()
    assert (got[:, :2] >= 0).all() and (got[:, 2:] <= size).all()
    assert (got[:, 2] > got[:, 0]).all() and (got[:, 3] > got[:, 1]).all()
    if not train:  # resize and pad only: every box of 4 px² or more survives, scaled
        # Each side is resized to round(side * scale), at least 1 px: scale per axis by that.
        scale = size / max(w, h)
        sx, sy = max(round(w * scale), 1) / w, max(round(h * scale), 1) / h
        scaled = boxes * np.array([sx, sy, sx, sy])
        area = (scaled[:, 2] - scaled[:, 0]) * (scaled[:, 3] - scaled[:, 1])
        for box in scaled[area > 5]:
            assert np.isclose(got, box, atol=0.51).all(axis=1).any(), (box, got)
