"""Reading image files: sizes from headers, pixels as RGB uint8, with the quirks real exports have.

Sizes follow EXIF orientation, because labelling tools show (and label) the rotated image, and
``load_rgb`` rotates the pixels the same way. Huge declared sizes (decompression bombs) are
refused before decoding.

Pixel values: every image, whatever its format, bit depth or mode, comes back as 8-bit RGB by one
rule, applied by :func:`to_rgb8` to the pixels as stored:

- ``uint8``: as is. ``bool`` (1-bit): 0 and 255.
- ``uint16``: the type's full range, linearly: ``round(v / 257)`` (65535 → 255, 257 → 1).
- anything else (float, 32-bit integer, ...): by value. The range is the smallest of 0..1,
  0..255 and 0..65535 that holds the image's largest finite value, scaled linearly to 0..255
  (a float image in 0..1 is multiplied by 255); values beyond every one of those are scaled by
  the image's own minimum..maximum. NaN counts as 0, values outside the range are clipped.
- Grayscale is repeated into three channels; an alpha channel is dropped (not composited);
  palette, CMYK and YCbCr images are converted to RGB by the decoder.

So the same picture saved as an 8-bit PNG, a 16-bit PNG or TIFF, or a float TIFF in 0..1 loads
to the same pixels (within one level of rounding). Two exceptions come from Pillow, which decodes
TIFFs: a TIFF with more than 8 bits per colour sample and an EXIF orientation other than 1 is cut
to 8 bits by Pillow (``v >> 8``, at most one level from the rule), and float TIFFs must have one
channel (Pillow cannot read multi-channel float TIFFs; they are reported as unreadable).
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
#: Read once, at import, from ``DEFECTDET_MAX_PIXELS``.
MAX_PIXELS = int(os.environ.get("DEFECTDET_MAX_PIXELS", 250_000_000))
_EXIF_ORIENTATION = 0x0112
Image.MAX_IMAGE_PIXELS = None  # we enforce MAX_PIXELS ourselves, with a clear message
#: Pillow modes whose pixels ``np.asarray`` gives at their stored depth (no conversion needed).
_NATIVE_MODES = frozenset({"1", "L", "LA", "RGB", "RGBA", "I", "F", "I;16", "I;16L", "I;16B"})


class ImageError(DataError):
    """An image file that is missing, unreadable, or too large."""


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed (after EXIF rotation), from the header only."""
    w, h, orientation, _pil = _header(path)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _header(path: str | Path) -> tuple[int, int, int, bool]:
    """(stored width, stored height, EXIF orientation 1..8, decode with Pillow) without decoding
    the pixels.

    OpenCV turns TIFFs by their orientation whatever the flags say, so TIFFs are decoded by
    Pillow, except deep colour ones (more than 8 bits per colour sample: Pillow cuts those to 8
    bits) when there is nothing to turn. Pillow reports a TIFF's size already rotated (and
    rotates its pixels on load), so the stored size comes from the TIFF tags; a PNG's EXIF is
    only looked for before the pixel data (``PngImageFile.getexif`` would otherwise decode the
    whole image, a bomb included).
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
            pil = im.format == "TIFF"
            if pil:
                w, h = int(exif.get(256, w)), int(exif.get(257, h))
            orientation = exif.get(_EXIF_ORIENTATION, 1)
            if pil and orientation == 1:
                bits = exif.get(258, (8,))
                bits = bits if isinstance(bits, tuple) else (bits,)
                pil = not (len(bits) >= 3 and max(bits) > 8)
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: image file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError) as exc:
        raise ImageError(f"{path}: not a readable image ({_reason(exc)})") from exc
    if w <= 0 or h <= 0:
        raise ImageError(f"{path}: image has an empty size {w}x{h}")
    if w * h > MAX_PIXELS:
        _refuse_bomb(path, w, h)
    return w, h, orientation if orientation in _ORIENT else 1, pil


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

    The one entry point for pixels: every decoder's output goes through :func:`to_rgb8` (the
    module docstring gives the rule). The pixels are decoded as stored and turned by the
    orientation ``read_size`` found, so the array always has the size ``read_size`` reports
    (decoders disagree on EXIF in PNG and TIFF).
    """
    w, h, orientation, pil = _header(path)  # refuses bombs and non-images with a clear message
    img = None
    if not pil:
        data = np.fromfile(str(path), dtype=np.uint8)  # fromfile+imdecode copes with any path
        flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION  # stored depth, channels
        img = _imdecode(data, flags) if data.size else None
    if img is not None and img.shape[:2] == (h, w):
        img = _ORIENT[orientation](to_rgb8(img, bgr=True))
    else:
        img = to_rgb8(_load_with_pil(path))
        shown = (w, h) if orientation < 5 else (h, w)
        if img.shape[:2] != shown[::-1]:
            raise ImageError(
                f"{path}: decoded size {img.shape[1]}x{img.shape[0]} differs from "
                f"the header's {shown[0]}x{shown[1]}"
            )
    return np.ascontiguousarray(img)


def to_rgb8(pixels: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Decoded pixels (H, W) or (H, W, 1..4), any dtype → (H, W, 3) uint8 RGB.

    The one conversion rule for every format and bit depth (see the module docstring). ``bgr``:
    the channels are in OpenCV's order (BGR, BGRA).
    """
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 3:
        channels = a.shape[2]
        if channels == 2:  # gray + alpha
            a = a[..., 0]
        elif channels >= 3:
            a = a[..., 2::-1] if bgr else a[..., :3]
    a = _to_uint8(a)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        # round(v / 257) in integers: (v + 128) // 257 is exact for every v in 0..65535
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    values = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf)
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 0.0
    low = 0.0
    for high in (1.0, 255.0, 65535.0):
        if top <= high:
            break
    else:
        low, high = float(finite.min()), top
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _imdecode(data: np.ndarray, flags: int) -> np.ndarray | None:
    """cv2.imdecode without OpenCV's own log lines about broken files (we report those)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        return cv2.imdecode(data, flags)
    except cv2.error:
        return None
    finally:
        cv2.utils.logging.setLogLevel(level)


def _load_with_pil(path: str | Path) -> np.ndarray:
    """TIFFs, and what OpenCV cannot decode (truncated files too, for a clean message): the
    pixels at their stored depth, EXIF orientation applied, for :func:`to_rgb8`."""
    from PIL import ImageOps

    try:
        # From a file object: Pillow memory-maps a file named by path, and its memory-mapped
        # reading of a TIFF turned by 90 degrees garbles the pixels.
        with open(path, "rb") as fh, Image.open(fh) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode not in _NATIVE_MODES:  # palette, CMYK, YCbCr, LAB, ...: 8-bit RGB
                im = im.convert("RGB")
            arr = np.asarray(im)
            return arr.astype(arr.dtype.newbyteorder("=")) if arr.dtype.byteorder == ">" else arr
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode image ({_reason(exc)})") from exc


def _reason(exc: Exception) -> str:
    text = str(exc).split("\n")[0]
    return text[:160] if text else type(exc).__name__
