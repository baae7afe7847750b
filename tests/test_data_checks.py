"""Image files are checked from their headers while loading: unreadable ones are reported by name
and skipped (fatal under --strict), with one header read per image and no pixel decoding; the
DEFECTDET_MAX_PIXELS limit; analysing annotations without their images (--no-check-images)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import coco_doc, write_image
from defectdet.cli import app
from defectdet.data import images, validate
from defectdet.data.formats import load_dataset
from defectdet.data.images import ImageError, load_rgb, read_size

runner = CliRunner()


def dataset(root: Path, sizes: bool = True) -> Path:
    """good.png (with a box) and bg.png, plus a zero-byte empty.png and a text file text.png;
    every image entry gives its size unless ``sizes`` is False."""
    write_image(root / "good.png")
    write_image(root / "bg.png")
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("this is not an image\n")
    names = ["good.png", "bg.png", "empty.png", "text.png"]
    w, h = (64, 48) if sizes else (0, 0)
    doc = coco_doc([(i + 1, n, w, h) for i, n in enumerate(names)], [(1, 1, (5, 5, 10, 10))])
    (root / "ann.json").write_text(json.dumps(doc))
    return root / "ann.json"


def test_analyze_reports_unreadable_images(tmp_path: Path):
    ann = dataset(tmp_path)
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["analyze", str(ann), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "unreadable-image: 2" in result.output
    for name in ("empty.png", "text.png"):
        assert f"{name}: not a readable image" in result.output
    assert "good.png" not in result.output and "bg.png" not in result.output
    data = json.loads(report.read_text())
    assert data["num_images"] == 2 and data["num_background_images"] == 1  # like missing images
    assert data["problems"] == {"unreadable-image": 2}


def test_analyze_strict_fails_on_unreadable_images(tmp_path: Path):
    result = runner.invoke(app, ["analyze", str(dataset(tmp_path)), "--strict"])
    assert result.exit_code == 2
    assert "--strict" in result.output
    assert "empty.png: not a readable image" in result.output
    assert "text.png: not a readable image" in result.output


def test_no_check_images_trusts_the_annotations(tmp_path: Path):
    result = runner.invoke(app, ["analyze", str(dataset(tmp_path)), "--no-check-images"])
    assert result.exit_code == 0, result.output
    assert "not a readable image" not in result.output
    assert load_dataset(tmp_path / "ann.json", check_images=False).num_images == 4


def test_unreadable_images_are_problems_like_missing_ones(tmp_path: Path):
    ann = dataset(tmp_path)
    images = json.loads(ann.read_text())["images"]
    images.append({"id": 5, "file_name": "gone.png", "width": 64, "height": 48})
    ann.write_text(json.dumps(json.loads(ann.read_text()) | {"images": images}))
    cat = load_dataset(ann)
    assert sorted(cat.images["file_name"]) == ["bg.png", "good.png"]
    problems = list(cat.problems)
    assert [p.kind for p in problems] == ["missing-image", "unreadable-image", "unreadable-image"]
    for p, image_id in zip(problems, (5, 3, 4), strict=True):
        assert Path(p.file).name == "ann.json" and p.where == f"image id {image_id}"
        assert p.action == "skipped"


@pytest.mark.parametrize("sizes", [True, False])
def test_one_header_read_per_image(tmp_path: Path, monkeypatch, sizes: bool):
    """Checked images: every header is read once, and that read also fills missing sizes;
    unchecked: only the images that need a size are read."""
    calls: list[str] = []
    real = validate.read_size

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(validate, "read_size", counting)
    ann = dataset(tmp_path, sizes=sizes)
    cat = load_dataset(ann)
    assert sorted(calls) == ["bg.png", "empty.png", "good.png", "text.png"]
    assert cat.num_images == 2
    assert set(cat.images["width"]) == {64} and set(cat.images["height"]) == {48}
    assert len(cat.problems) == 2  # each unreadable image reported once
    calls.clear()
    if sizes:
        assert load_dataset(ann, check_images=False).num_images == 4
        assert calls == []
    else:  # sizes must come from the headers, so the files are read after all
        assert load_dataset(ann, check_images=False).num_images == 2
        assert sorted(calls) == ["bg.png", "empty.png", "good.png", "text.png"]


def test_header_check_does_not_decode_pixels(tmp_path: Path, monkeypatch):
    """A file whose header is intact but whose pixels are cut passes loading (training skips it
    by name when it reads it); nothing is decoded while loading."""
    from PIL import Image, ImageFile

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels decoded while loading")

    noise = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    _, png = cv2.imencode(".png", noise)
    (tmp_path / "cut.png").write_bytes(png.tobytes()[: png.size // 2])
    write_image(tmp_path / "ok.png")
    doc = coco_doc([(1, "cut.png", 200, 100), (2, "ok.png", 64, 48)], [(2, 1, (5, 5, 10, 10))])
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    cat = load_dataset(tmp_path / "ann.json")
    assert cat.num_images == 2 and len(cat.problems) == 0


# ---------------------------------------------------------------------------- DEFECTDET_MAX_PIXELS
def test_max_pixels_is_read_from_the_environment(tmp_path: Path):
    """The limit is read once, when defectdet.data.images is imported: a fresh process with
    DEFECTDET_MAX_PIXELS lowered refuses an image over it by name, and keeps one under it."""
    write_image(tmp_path / "small.png", 40, 30)  # 1200 pixels
    write_image(tmp_path / "big.png", 64, 48)  # 3072 pixels
    doc = coco_doc([(1, "small.png", 40, 30), (2, "big.png", 64, 48)], [(1, 1, (5, 5, 10, 10))])
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    env = {**os.environ, "DEFECTDET_MAX_PIXELS": "2000"}
    args = [sys.executable, "-m", "defectdet", "analyze", str(tmp_path / "ann.json")]
    done = subprocess.run([*args, "--json", "-"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "big.png: declared size 64x48 exceeds the limit of 2000 pixels" in done.stderr
    assert "raise DEFECTDET_MAX_PIXELS" in done.stderr and "small.png" not in done.stderr
    assert json.loads(done.stdout)["num_images"] == 1


def test_max_pixels_applies_to_pixels_headers_and_given_sizes(tmp_path: Path, monkeypatch):
    """In one process the module attribute is the limit (the environment was read at import)."""
    write_image(tmp_path / "small.png", 40, 30)
    write_image(tmp_path / "big.png", 64, 48)
    monkeypatch.setattr(images, "MAX_PIXELS", 2000)
    assert read_size(tmp_path / "small.png") == (40, 30)
    assert load_rgb(tmp_path / "small.png").shape == (30, 40, 3)
    for read in (read_size, load_rgb):
        with pytest.raises(ImageError, match=r"big\.png: declared size 64x48 exceeds the limit"):
            read(tmp_path / "big.png")
    # A size given in the annotations over the limit is not trusted either: with the image
    # checks off, the header is read for it, and refuses it.
    doc = coco_doc([(1, "small.png", 40, 30), (2, "big.png", 64, 48)], [(1, 1, (5, 5, 10, 10))])
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    cat = load_dataset(tmp_path / "ann.json", check_images=False)
    assert cat.images["file_name"].tolist() == ["small.png"]
    (problem,) = cat.problems
    assert problem.where == "image id 2" and problem.kind == "unreadable-image"
    assert problem.message.startswith("size 64x48 exceeds the limit of 2000 pixels, and ")


# ---------------------------------------------------------------------------- --no-check-images
def test_no_check_images_works_without_the_image_files(tmp_path: Path):
    """An annotation file analysed on its own: with --no-check-images the missing images are
    not looked for; with the checks on (the default) each one is reported."""
    doc = coco_doc([(1, "a.png", 64, 48), (2, "b.png", 64, 48)], [(1, 1, (5, 5, 10, 10))])
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    args = ["analyze", str(tmp_path / "ann.json")]
    result = runner.invoke(app, [*args, "--no-check-images", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output and "not found" not in result.output
    report = json.loads(result.stdout)
    assert report["num_images"] == 2 and report["num_background_images"] == 1

    checked = runner.invoke(app, args)  # no image left: one error listing what is missing
    assert checked.exit_code == 2
    assert "no usable images" in checked.output
    assert "'a.png' not found" in checked.output and "'b.png' not found" in checked.output

    write_image(tmp_path / "a.png")  # one present: the other is a warning, and skipped
    checked = runner.invoke(app, [*args, "--json", str(tmp_path / "r.json")])
    assert checked.exit_code == 0, checked.output
    assert "ann.json (image id 2): image file 'b.png' not found [skipped]" in checked.output
    assert json.loads((tmp_path / "r.json").read_text())["num_images"] == 1
