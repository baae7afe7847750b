"""One rule for pixel values (issue 12): the same picture in any format and bit depth loads, through
``load_rgb``, to the same 8-bit RGB pixels; sizes agree with ``read_size``; EXIF orientation is
applied to deep images as to 8-bit ones. The rule is in ``defectdet.data.images``'s docstring."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from defectdet.data.images import ImageError, load_rgb, read_size, to_rgb8

H, W = 6, 48
#: 16-bit values of a horizontal gradient that stops short of white (60000 of 65535), so a
#: decoder that scales by the image's own maximum is caught; rows differ by a small offset.
V16 = (np.linspace(0, 60000, W)[None, :] + np.arange(H)[:, None] * 1000).astype(np.uint16)
#: Three different channels: the gradient, its mirror, half of it.
RGB16 = np.stack([V16, V16[:, ::-1], V16 // 2], axis=-1)


def rule(a: np.ndarray) -> np.ndarray:
    """What the rule makes of 16-bit values: round(v / 257)."""
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


V8, RGB8 = rule(V16), rule(RGB16)


def pil(array: np.ndarray) -> Callable[[Path], object]:
    return lambda p: Image.fromarray(array).save(p)


def cv(array: np.ndarray) -> Callable[[Path], object]:
    """OpenCV writes BGR; give it RGB, get RGB in the file."""

    def write(p: Path) -> None:
        assert cv2.imwrite(str(p), array[..., ::-1].copy() if array.ndim == 3 else array)

    return write


#: name → (writer, the file holds colour); every one holds the same picture.
VARIANTS: dict[str, tuple[Callable[[Path], object], bool]] = {
    "gray8.png": (pil(V8), False),
    "gray16.png": (cv(V16), False),
    "gray16.pgm": (cv(V16), False),
    "gray8.tif": (pil(V8), False),
    "gray16.tif": (pil(V16), False),
    "gray-float-0-1.tif": (pil(V16.astype(np.float32) / 65535), False),
    "gray-float-0-65535.tif": (pil(V16.astype(np.float32)), False),
    "gray-int32.tif": (pil(V16.astype(np.int32)), False),
    "rgb8.png": (pil(RGB8), True),
    "rgb16.png": (cv(RGB16), True),
    "rgb8.tif": (pil(RGB8), True),
    "rgb16.tif": (cv(RGB16), True),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_same_picture_loads_to_the_same_pixels_in_every_format(tmp_path: Path, name: str):
    write, colour = VARIANTS[name]
    path = tmp_path / name
    write(path)
    expected = RGB8 if colour else np.repeat(V8[..., None], 3, axis=2)
    assert read_size(path) == (W, H)
    pixels = load_rgb(path)
    assert pixels.shape == (H, W, 3) and pixels.dtype == np.uint8
    diff = np.abs(pixels.astype(int) - expected.astype(int))
    assert diff.max() <= 1, (name, pixels[0, ::8, 0], expected[0, ::8, 0])
    if "16" in name or "8" in name:  # 8- and 16-bit sources: the rule is exact
        assert diff.max() == 0, name


def test_uint16_is_scaled_by_the_full_range_and_rounded(tmp_path: Path):
    values = np.array([[0, 128, 129, 256, 257, 385, 386, 32896, 65280, 65535]], np.uint16)
    expected = np.array([[0, 0, 1, 1, 1, 1, 2, 128, 254, 255]], np.uint8)
    assert (to_rgb8(values) == expected[..., None]).all()
    assert cv2.imwrite(str(tmp_path / "v.png"), values)
    Image.fromarray(values).save(tmp_path / "v.tif")
    for name in ("v.png", "v.tif"):
        assert (load_rgb(tmp_path / name)[..., 0] == expected).all(), name


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),  # max <= 1: 0..1
        ([-0.5, 0.5, 1.0], [0, 128, 255]),  # below the range: clipped
        ([0.0, 2.0, 127.5, 255.0], [0, 2, 128, 255]),  # max <= 255: 0..255
        ([0.0, 257.0, 32896.0, 65535.0], [0, 1, 128, 255]),  # max <= 65535: 0..65535
        ([1e6, 1.5e6, 2e6], [0, 128, 255]),  # beyond: the image's own min..max
        ([float("nan"), 0.5, 1.0], [0, 128, 255]),  # NaN counts as 0
    ],
)
def test_floats_are_scaled_by_the_documented_rule(values: list[float], expected: list[int]):
    for dtype in (np.float32, np.float64):
        out = to_rgb8(np.array([values], dtype))
        assert out.shape == (1, len(values), 3)
        assert out[0, :, 0].tolist() == expected, dtype
    if all(v == int(v) for v in values if v == v):  # whole numbers: 32-bit integers alike
        assert to_rgb8(np.array([values], np.int32))[0, :, 0].tolist() == expected


def test_channels_bool_and_alpha():
    assert to_rgb8(np.array([[True, False]]))[0].tolist() == [[255] * 3, [0] * 3]
    gray_alpha = np.array([[[90, 7]]], np.uint8)
    assert to_rgb8(gray_alpha)[0, 0].tolist() == [90, 90, 90]
    rgba = np.array([[[200, 10, 20, 0]]], np.uint8)
    assert to_rgb8(rgba)[0, 0].tolist() == [200, 10, 20]  # alpha dropped, not composited
    assert to_rgb8(rgba, bgr=True)[0, 0].tolist() == [20, 10, 200]


TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("name", ["gray16.png", "gray8.tif", "gray16.tif", "gray-float.tif"])
def test_exif_orientation_turns_deep_and_gray_images_too(
    tmp_path: Path, name: str, orientation: int
):
    stored = {
        "gray16.png": V16,
        "gray8.tif": V8,
        "gray16.tif": V16,
        "gray-float.tif": V16.astype(np.float32) / 65535,
    }[name]
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / name, exif=exif.tobytes())
    shown = Image.fromarray(V8)
    shown = np.asarray(shown.transpose(TRANSPOSE[orientation]) if orientation > 1 else shown)
    size = (H, W) if orientation >= 5 else (W, H)
    assert read_size(tmp_path / name) == size
    pixels = load_rgb(tmp_path / name)
    assert pixels.shape == (size[1], size[0], 3)
    assert np.abs(pixels[..., 0].astype(int) - shown).max() <= 1


def test_multichannel_float_tiff_is_refused_by_name(tmp_path: Path):
    """The documented exception: Pillow cannot read it, so it is an unreadable image."""
    assert cv2.imwrite(str(tmp_path / "f.tif"), np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError, match=r"f\.tif: not a readable image"):
        load_rgb(tmp_path / "f.tif")
