"""Image files are checked from their headers while loading: unreadable ones are reported by name
and skipped (fatal under --strict), with one header read per image and no pixel decoding."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import coco_doc, write_image
from defectdet.cli import app
from defectdet.data import validate
from defectdet.data.formats import load_dataset

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
