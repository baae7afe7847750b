"""Reading image files: sizes from headers, pixels as RGB uint8, with the quirks real exports have.

Sizes follow EXIF orientation, because labelling tools show (and label) the rotated image, and
``load_rgb`` rotates the pixels the same way. Grayscale, 16-bit, RGBA, palette and CMYK images all
come back as 8-bit RGB. Huge declared sizes (decompression bombs) are refused before decoding.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from defectdet.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm"}
)
#: Refuse images with more pixels than this (a 4000 x 50000 line-scan image still passes).
MAX_PIXELS = int(os.environ.get("DEFECTDET_MAX_PIXELS", 250_000_000))
_EXIF_ORIENTATION = 0x0112
Image.MAX_IMAGE_PIXELS = None  # we enforce MAX_PIXELS ourselves, with a clear message


class ImageError(DataError):
    """An image file that is missing, unreadable, or too large."""


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed (after EXIF rotation), from the header only."""
    try:
        with Image.open(path) as im, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w, h = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1) if im.format != "PNG" else 1
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: image file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({_reason(exc)})") from exc
    if w <= 0 or h <= 0:
        raise ImageError(f"{path}: image has an empty size {w}x{h}")
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"{path}: declared size {w}x{h} exceeds the limit of {MAX_PIXELS} pixels "
            "(possible decompression bomb; raise DEFECTDET_MAX_PIXELS if it is genuine)"
        )
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image to an (H, W, 3) uint8 RGB array, EXIF orientation applied."""
    read_size(path)  # cheap header check: refuses bombs and non-images with a clear message
    data = np.fromfile(str(path), dtype=np.uint8)  # fromfile+imdecode copes with any path
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    img = _load_with_pil(path) if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def _load_with_pil(path: str | Path) -> np.ndarray:
    """Fallback for what OpenCV cannot decode (and for truncated files, for a clean message)."""
    from PIL import ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                arr = (arr / max(float(arr.max()), 1.0) * 255).astype(np.uint8)
                return np.stack([arr] * 3, axis=-1)
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode image ({_reason(exc)})") from exc


def _reason(exc: Exception) -> str:
    text = str(exc).split("\n")[0]
    return text[:160] if text else type(exc).__name__
