"""Readers for every format, including the sloppy cases real exports have."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import coco_doc, write_image
from defectdet.data.formats import detect_format, load_dataset
from defectdet.errors import DataError


def kinds(catalog) -> dict[str, int]:
    return catalog.problems.counts()


# ---------------------------------------------------------------------------- COCO
def test_coco_reads_images_boxes_and_keeps_background(coco_dataset: Path):
    cat = load_dataset(coco_dataset)
    assert cat.format == "coco"
    assert cat.classes == ["scratch", "crack"]
    assert cat.num_images == 4
    assert cat.background_mask().sum() == 1  # image 4 has no boxes but is kept
    assert len(cat.boxes) == 4 and len(cat.problems) == 0
    row = cat.boxes[cat.boxes["image_id"] == 1].sort_values("x1").iloc[0]
    assert (row.x1, row.y1, row.x2, row.y2, row.class_id) == (5, 5, 15, 15, 0)
    assert cat.path_of(cat.images.iloc[0].file_name).is_file()


def test_coco_folder_with_split_files(tmp_path: Path):
    for n in range(3):
        write_image(tmp_path / "images" / f"{n}.jpg")
    train = coco_doc(
        [(1, "images/0.jpg", 64, 48), (2, "images/1.jpg", 64, 48)], [(1, 1, (1, 1, 5, 5))]
    )
    val = coco_doc([(7, "images/2.jpg", 64, 48)], [(7, 2, (1, 1, 5, 5))])
    (tmp_path / "instances_train2017.json").write_text(json.dumps(train))
    (tmp_path / "instances_val2017.json").write_text(json.dumps(val))
    cat = load_dataset(tmp_path)
    assert sorted(cat.splits()) == ["train", "val"]
    assert (cat.images["split"] == "train").sum() == 2


def test_coco_validation_problems_named(tmp_path: Path):
    write_image(tmp_path / "a.jpg", 64, 48)
    write_image(tmp_path / "b.jpg", 64, 48)
    outside = tmp_path.parent / f"{tmp_path.name}_outside.jpg"
    write_image(outside)
    os.symlink(outside, tmp_path / "link.jpg")
    doc = coco_doc(
        [
            (1, "a.jpg", 64, 48),
            (2, "missing.jpg", 64, 48),
            (3, "../escape.jpg", 64, 48),
            (4, "a.jpg", 64, 48),
            (5, "link.jpg", 64, 48),
            (6, "b.jpg", 64, 48),
        ],
        [
            (1, 1, (60, 40, 6, 6)),  # slightly outside: clipped
            (1, 1, (100, 100, 5, 5)),  # entirely outside: dropped
            (1, 2, (float("nan"), 1, 3, 3)),  # NaN: dropped
            (1, 1, (5, 5, 0, 4)),  # zero width: dropped
            (1, 9, (5, 5, 4, 4)),  # unknown category: dropped
            (99, 1, (5, 5, 4, 4)),  # unknown image: dropped
            (2, 1, (5, 5, 4, 4)),  # image missing: dropped silently with its image
            (6, 1, (1, 1, 3, 3)),  # fine
        ],
    )
    doc["annotations"][2]["bbox"][0] = None
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    cat = load_dataset(tmp_path / "ann.json")
    k = kinds(cat)
    assert k["box-clipped"] == 1 and k["box-outside"] == 1 and k["bad-coordinates"] == 1
    assert k["empty-box"] == 1 and k["unknown-class"] == 1 and k["unknown-image"] == 1
    assert k["missing-image"] == 1 and k["duplicate-image"] == 1 and k["path-escape"] == 2
    assert sorted(cat.images["file_name"]) == ["a.jpg", "b.jpg"]
    assert len(cat.boxes) == 2
    clipped = cat.boxes[cat.boxes["image_id"] == 1].iloc[0]
    assert (clipped.x1, clipped.x2, clipped.y2) == (60, 64, 46)
    messages = [str(p) for p in cat.problems]
    assert any("ann.json (image id 2)" in m and "missing.jpg" in m for m in messages)
    assert any("annotation id 5" in m and "unknown class" in m for m in messages)
    with pytest.raises(DataError, match="--strict"):
        load_dataset(tmp_path / "ann.json", strict=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"images": {}, "categories": []}', "must be a list"),
        ('{"images": [], "annotations": [], "categories": []}', "no categories"),
    ],
)
def test_coco_unusable_files(tmp_path: Path, content: str, message: str):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "bad.json")


def test_coco_string_coordinates_are_rejected_per_record(tmp_path: Path):
    write_image(tmp_path / "a.jpg")
    doc = coco_doc([(1, "a.jpg", 64, 48)], [(1, 1, ("1", "2", "3", "4")), (1, 1, (1, 1, 5, 5))])
    (tmp_path / "a.json").write_text(json.dumps(doc))
    cat = load_dataset(tmp_path / "a.json")
    assert len(cat.boxes) == 1 and kinds(cat) == {"bad-coordinates": 1}


def test_empty_dataset_is_one_clear_error(tmp_path: Path):
    (tmp_path / "a.json").write_text(json.dumps(coco_doc([(1, "gone.jpg", 5, 5)], [])))
    with pytest.raises(DataError, match="no usable images"):
        load_dataset(tmp_path / "a.json")


def test_missing_path_and_unknown_folder(tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no annotations found"):
        detect_format(tmp_path)


# ---------------------------------------------------------------------------- VOC
VOC_XML = """<annotation><folder>x</folder>{filename}
<size><width>64</width><height>48</height><depth>3</depth></size>
<object><name>{name}</name><bndbox><xmin>11</xmin><ymin>6</ymin><xmax>20</xmax><ymax>15</ymax>
</bndbox></object></annotation>"""


def write_voc(path: Path, filename: str | None, name: str = "scratch") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"<filename>{filename}</filename>" if filename is not None else ""
    path.write_text(VOC_XML.format(filename=tag, name=name))


def test_voc_sloppy_filenames_resolved(tmp_path: Path):
    write_image(tmp_path / "JPEGImages" / "a.jpg")
    write_image(tmp_path / "JPEGImages" / "b.png")
    write_image(tmp_path / "JPEGImages" / "c.jpg")
    write_image(tmp_path / "JPEGImages" / "d.jpg")
    write_voc(tmp_path / "Annotations" / "a.xml", "a.jpg")  # beside? no: found by name
    write_voc(tmp_path / "Annotations" / "b.xml", "b")  # no extension: by stem
    write_voc(tmp_path / "Annotations" / "c.xml", "C:\\labelling\\pc\\c.jpg")  # elsewhere
    write_voc(tmp_path / "Annotations" / "d.xml", None, name="crack")  # no filename: xml stem
    sets = tmp_path / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("a\nb\nc\n")
    (sets / "val.txt").write_text("d\n")
    cat = load_dataset(tmp_path)
    assert cat.format == "voc" and len(cat.problems) == 0
    assert sorted(cat.images["file_name"]) == [
        f"JPEGImages/{n}" for n in ("a.jpg", "b.png", "c.jpg", "d.jpg")
    ]
    assert cat.classes == ["crack", "scratch"]
    box = cat.boxes.iloc[0]
    assert (box.x1, box.y1, box.x2, box.y2) == (10, 5, 20, 15)  # 1-based → 0-based
    assert dict(cat.images.groupby("split").size()) == {"train": 3, "val": 1}


def test_voc_entity_expansion_refused(tmp_path: Path):
    write_image(tmp_path / "a.jpg")
    write_voc(tmp_path / "a.xml", "a.jpg")
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><annotation><filename>&lol2;</filename>'
        "</annotation>"
    )
    (tmp_path / "bomb.xml").write_text(bomb)
    (tmp_path / "broken.xml").write_text("<annotation><filename>")
    cat = load_dataset(tmp_path)
    messages = " ".join(str(p) for p in cat.problems)
    assert "bomb.xml: unsafe XML refused" in messages
    assert "broken.xml: not valid XML" in messages
    assert cat.num_images == 1


# ---------------------------------------------------------------------------- YOLO
def test_yolo_reads_normalised_boxes_splits_and_background(tmp_path: Path):
    write_image(tmp_path / "images" / "train" / "a.jpg", 100, 50)
    write_image(tmp_path / "images" / "train" / "b.jpg", 100, 50)
    write_image(tmp_path / "images" / "val" / "c.jpg", 100, 50)
    (tmp_path / "data.yaml").write_text("names:\n  0: scratch\n  1: crack\n")
    labels = tmp_path / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\n7 0.5 0.5 0.1 0.1\nx y z\n"
    )
    (tmp_path / "labels" / "val").mkdir()
    (tmp_path / "labels" / "val" / "c.txt").write_text("")
    cat = load_dataset(tmp_path)
    assert cat.format == "yolo" and cat.classes == ["scratch", "crack"]
    assert cat.num_images == 3 and cat.background_mask().sum() == 2
    a = cat.boxes.sort_values("class_id").to_numpy()
    np.testing.assert_allclose(a[0, 2:], [40, 15, 60, 35])  # 0.5±0.1 of 100, 0.5±0.2 of 50
    np.testing.assert_allclose(a[1, 2:], [10, 5, 30, 15])  # polygon → its bounds
    assert kinds(cat) == {"unknown-class": 1, "bad-record": 1}
    assert any("a.txt (line 4)" in str(p) for p in cat.problems)
    assert dict(cat.images.groupby("split").size()) == {"train": 2, "val": 1}


def test_yolo_classes_txt_and_corrupt_image(tmp_path: Path):
    write_image(tmp_path / "images" / "a.jpg")
    (tmp_path / "images" / "bad.jpg").write_bytes(b"not an image at all")
    (tmp_path / "labels").mkdir()
    (tmp_path / "classes.txt").write_text("scratch\n")
    cat = load_dataset(tmp_path)
    assert cat.num_images == 1
    assert kinds(cat) == {"unreadable-image": 1}
    assert "bad.jpg" in str(next(iter(cat.problems)))


# ---------------------------------------------------------------------------- CSV
def test_csv_background_rows_aliases_and_bad_values(tmp_path: Path):
    for n in "abc":
        write_image(tmp_path / "img" / f"{n}.png", 40, 30)
    (tmp_path / "boxes.csv").write_text(
        "filename,xmin,ymin,xmax,ymax,class\n"
        "img/a.png,1,2,10,12,scratch\n"
        "img/a.png,5,5,8,oops,crack\n"
        "img/b.png,,,,,\n"
        "img/c.png,0,0,5,5,crack\n"
    )
    cat = load_dataset(tmp_path / "boxes.csv")
    assert cat.format == "csv" and cat.classes == ["crack", "scratch"]
    assert cat.num_images == 3 and cat.background_mask().sum() == 1
    assert len(cat.boxes) == 2
    assert kinds(cat) == {"bad-coordinates": 1}
    assert "boxes.csv (line 3)" in str(next(iter(cat.problems)))
    assert set(cat.images["width"]) == {40}


def test_csv_missing_column(tmp_path: Path):
    (tmp_path / "x.csv").write_text("image,x1,y1\n")
    with pytest.raises(DataError, match="missing column 'x2'"):
        load_dataset(tmp_path / "x.csv")


def test_convert_round_trip_through_coco(tmp_path: Path, coco_dataset: Path):
    from defectdet.io import write_json

    cat = load_dataset(coco_dataset)
    write_json(coco_dataset / "annotations" / "copy.json", cat.to_coco())
    again = load_dataset(coco_dataset / "annotations" / "copy.json")
    cols = ["image_id", "class_id", "x1", "y1", "x2", "y2"]
    a = cat.boxes[cols].sort_values(cols).to_numpy()
    b = again.boxes[cols].sort_values(cols).to_numpy()
    np.testing.assert_allclose(a, b)
    assert again.num_images == cat.num_images


def test_coco_split_files_that_restart_ids_at_one(tmp_path: Path):
    """Many exports number images from 1 in every file: (file, id) is the image's identity."""
    for n in range(4):
        write_image(tmp_path / "images" / f"{n}.jpg")
    train = coco_doc(
        [(1, "images/0.jpg", 64, 48), (2, "images/1.jpg", 64, 48)],
        [(1, 1, (1, 1, 5, 5)), (2, 2, (2, 2, 6, 6))],
    )
    val = coco_doc(
        [(1, "images/2.jpg", 64, 48), (2, "images/3.jpg", 64, 48)],
        [(2, 2, (3, 3, 7, 7))],
    )
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "val.json").write_text(json.dumps(val))
    cat = load_dataset(tmp_path)
    assert len(cat.problems) == 0 and cat.num_images == 4 and len(cat.boxes) == 3
    boxes = cat.boxes.merge(cat.images, on="image_id")
    val_boxes = boxes[boxes["split"] == "val"]
    assert val_boxes["file_name"].tolist() == ["images/3.jpg"]
    assert val_boxes[["x1", "class_id"]].values.tolist() == [[3.0, 1]]
    assert cat.images["image_id"].is_unique


def test_csv_incomplete_rows_are_bad_records_and_image_only_rows_defect_free(tmp_path: Path):
    """Issue 12: a cut row (``d.png,1``) was taken for a defect-free image. Only a row with the
    image name alone (or with every other field empty) is one; a row with a label but not all
    four coordinates, or coordinates without a label, is skipped whole and named by its line."""
    for n in "abcdef":
        write_image(tmp_path / f"{n}.png")
    (tmp_path / "ann.csv").write_text(
        "image,x1,y1,x2,y2,label\n"
        "a.png,1,2,10,12,scratch\n"  # line 2: a box
        "b.png\n"  # line 3: defect-free
        "c.png,,,,,\n"  # line 4: defect-free
        "\n"  # line 5: blank (line numbers below stay the file's own)
        "d.png,1\n"  # line 6: cut
        "e.png,1,1,5,,crack\n"  # line 7: label, three coordinates
        "f.png,1,1,5,5,\n"  # line 8: coordinates, no label
    )
    cat = load_dataset(tmp_path / "ann.csv")
    assert sorted(cat.images["file_name"]) == ["a.png", "b.png", "c.png"]
    background = cat.images.loc[cat.background_mask(), "file_name"]
    assert sorted(background) == ["b.png", "c.png"]
    assert cat.classes == ["scratch"] and len(cat.boxes) == 1
    assert [(p.where, p.kind, p.action) for p in cat.problems] == [
        ("line 6", "bad-record", "skipped"),
        ("line 7", "bad-record", "skipped"),
        ("line 8", "bad-record", "skipped"),
    ]
    messages = [p.message for p in cat.problems]
    assert messages == [
        "row has coordinates but no label",
        "row has a label but no y2",
        "row has coordinates but no label",
    ]
    with pytest.raises(DataError, match=r"--strict(.|\n)*ann\.csv \(line 6\)"):
        load_dataset(tmp_path / "ann.csv", strict=True)


def test_coco_sizes_given_but_unusable_are_repaired_and_reported(tmp_path: Path):
    """Issue 12: a size the reader cannot use is read from the image, and that is reported."""
    for n in "abcde":
        write_image(tmp_path / f"{n}.png")
    images = [(1, "a.png", 1e308, 48), (2, "b.png", "64", 48), (3, "c.png", 64, -48)]
    images += [(4, "d.png", 0, 0), (5, "e.png", 64, 48)]  # not given / fine: nothing to report
    (tmp_path / "ann.json").write_text(json.dumps(coco_doc(images, [(1, 1, (5, 5, 10, 10))])))
    doc = json.loads((tmp_path / "ann.json").read_text())
    doc["images"][3].pop("width")
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    for check_images in (True, False):
        cat = load_dataset(tmp_path / "ann.json", check_images=check_images)
        assert cat.images[["width", "height"]].values.tolist() == [[64, 48]] * 5
        problems = [(p.where, p.kind, p.message, p.action) for p in cat.problems]
        read = "size read from the image: 64x48"
        assert problems == [
            ("image id 1", "bad-size", "width 1e+308 exceeds the limit of 250000000 pixels", read),
            ("image id 2", "bad-size", "width '64' is not a number", read),
            ("image id 3", "bad-size", "height -48 is not a positive whole number", read),
        ]


def test_voc_guessed_images_are_reported(tmp_path: Path):
    write_image(tmp_path / "JPEGImages" / "a.jpg")
    write_image(tmp_path / "one" / "b.png")
    write_image(tmp_path / "two" / "b.png")
    write_voc(tmp_path / "Annotations" / "a.xml", "a.png")  # only a.jpg exists
    write_voc(tmp_path / "Annotations" / "b.xml", "b.png")  # two images named b.png
    cat = load_dataset(tmp_path)
    assert sorted(cat.images["file_name"]) == ["JPEGImages/a.jpg", "one/b.png"]
    assert [(Path(p.file).name, p.kind, p.action) for p in cat.problems] == [
        ("a.xml", "guessed-image", "using 'JPEGImages/a.jpg'"),
        ("b.xml", "guessed-image", "using 'one/b.png'"),
    ]
    assert "2 images fit filename 'b.png' (one/b.png, two/b.png)" in str(cat.problems.problems[1])
