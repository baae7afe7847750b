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
    w, h, orientation = _header(path)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _header(path: str | Path) -> tuple[int, int, int]:
    """(stored width, stored height, EXIF orientation 1..8) without decoding the pixels.

    Pillow reports a TIFF's size already rotated (and rotates its pixels on load), so the stored
    size comes from the TIFF tags; a PNG's EXIF is only looked for before the pixel data
    (``PngImageFile.getexif`` would otherwise decode the whole image, a bomb included).
    """
    try:
        with Image.open(path) as im, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w, h = im.size
            if w * h > MAX_PIXELS:
                _refuse_bomb(path, w, h)
            if im.format == "PNG":
                exif = Image.Exif()
                if im.info.get("exif"):
                    exif.load(im.info["exif"])
            else:
                exif = im.getexif()
            if im.format == "TIFF":
                w, h = int(exif.get(256, w)), int(exif.get(257, h))
            orientation = exif.get(_EXIF_ORIENTATION, 1)
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: image file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError) as exc:
        raise ImageError(f"{path}: not a readable image ({_reason(exc)})") from exc
    if w <= 0 or h <= 0:
        raise ImageError(f"{path}: image has an empty size {w}x{h}")
    if w * h > MAX_PIXELS:
        _refuse_bomb(path, w, h)
    return w, h, orientation if orientation in _ORIENT else 1


def _refuse_bomb(path: str | Path, w: int, h: int) -> None:
    raise ImageError(
        f"{path}: declared size {w}x{h} exceeds the limit of {MAX_PIXELS} pixels "
        "(possible decompression bomb; raise DEFECTDET_MAX_PIXELS if it is genuine)"
    )


#: EXIF orientation → how to turn the stored pixels (H, W, C) into the displayed ones.
_ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a.swapaxes(0, 1)[:, ::-1],
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: a.swapaxes(0, 1)[::-1],
}


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image to an (H, W, 3) uint8 RGB array, EXIF orientation applied.

    The pixels are decoded as stored and turned by the orientation ``read_size`` found, so the
    array always has the size ``read_size`` reports (decoders disagree on EXIF in PNG and TIFF).
    """
    w, h, orientation = _header(path)  # refuses bombs and non-images with a clear message
    # OpenCV turns some TIFFs by their orientation whatever the flags say: Pillow decodes those.
    tiff = Path(path).suffix.lower() in (".tif", ".tiff")
    data = np.fromfile(str(path), dtype=np.uint8)  # fromfile+imdecode copes with any path
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    img = _imdecode(data, flags) if data.size and not tiff else None
    if img is not None and img.shape[:2] == (h, w):
        img = _ORIENT[orientation](cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    else:
        img = _load_with_pil(path)
        shown = (w, h) if orientation < 5 else (h, w)
        if img.shape[:2] != shown[::-1]:
            raise ImageError(
                f"{path}: decoded size {img.shape[1]}x{img.shape[0]} differs from "
                f"the header's {shown[0]}x{shown[1]}"
            )
    return np.ascontiguousarray(img)


def _imdecode(data: np.ndarray, flags: int) -> np.ndarray | None:
    """cv2.imdecode without OpenCV's own log lines about broken files (we report those)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        return cv2.imdecode(data, flags)
    finally:
        cv2.utils.logging.setLogLevel(level)


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
