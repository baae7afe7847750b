"""Procedural images of surfaces with rare defects, written as a COCO detection dataset.

It lets the tool be tried, tested and demonstrated without proprietary data: class frequencies
are as skewed as on a real line, and every box is measured from the pixels a defect changed.

Defects are drawn as a *shade* field (float, -1..1: negative darkens towards black, positive
brightens towards white) into their own array first; the box is the tight bounds of ``shade != 0``
in pixel-edge convention (``x2 = x + w`` is one past the last changed column).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from defectdet.data.split import stratify
from defectdet.errors import ConfigError, OutputExistsError
from defectdet.io import write_json

DEFECT_KINDS = ("scratch", "spot", "crack", "inclusion")
TEXTURES = ("metal", "fabric", "tiles")
#: Shade weaker than this is dropped, so every pixel inside the mask visibly changes (>= 2 levels).
MIN_SHADE = 0.05
MAX_IOU = 0.3
PLACEMENT_TRIES = 8
JPEG_QUALITY = 92
Box = tuple[int, int, int, int]  # x1, y1, x2, y2 (x2/y2 exclusive)


@dataclass
class SynthConfig:
    """What to generate. Sizes of defects are given for 128 px and scale with the image side."""

    images: int = 300
    width: int = 128
    height: int = 128
    seed: int = 0
    background_fraction: float = 0.6
    classes: dict[str, float] = field(
        default_factory=lambda: {"scratch": 0.70, "spot": 0.22, "crack": 0.06, "inclusion": 0.02}
    )
    textures: tuple[str, ...] = TEXTURES
    max_defects: int = 3
    val_fraction: float = 0.2
    image_format: str = "jpg"


@dataclass
class Rendered:
    """One generated image (BGR uint8), the same surface without defects, and its boxes."""

    image: np.ndarray
    base: np.ndarray
    boxes: list[Box]
    labels: list[int]  # index into cfg.classes


def validate(cfg: SynthConfig) -> None:
    """Fail early with a message naming the option, instead of odd images or a numpy error."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(f"synth: {msg}")

    def is_int(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    for name, lo, hi in [("images", 1, None), ("width", 32, 8192), ("height", 32, 8192),
                         ("seed", 0, None), ("max_defects", 1, None)]:  # fmt: skip
        v = getattr(cfg, name)
        ok = is_int(v) and v >= lo and (hi is None or v <= hi)
        need(ok, f"{name} must be an integer in [{lo}, {hi or 'inf'}], got {v!r}")
    for name in ("background_fraction", "val_fraction"):
        v = getattr(cfg, name)
        need(isinstance(v, (int, float)) and 0 <= v <= 1, f"{name} must be in [0, 1], got {v!r}")
    need(bool(cfg.classes), "classes must name at least one defect class")
    for name, w in cfg.classes.items():
        need(name in DEFECT_KINDS, f"unknown class {name!r}; known: {', '.join(DEFECT_KINDS)}")
        ok = isinstance(w, (int, float)) and bool(np.isfinite(w)) and w > 0
        need(ok, f"weight of class {name!r} must be a number > 0, got {w!r}")
    need(bool(cfg.textures), "textures must name at least one texture")
    for t in cfg.textures:
        need(t in TEXTURES, f"unknown texture {t!r}; known: {', '.join(TEXTURES)}")
    need(
        cfg.image_format in ("jpg", "png"),
        f"image_format must be jpg or png, not {cfg.image_format!r}",
    )


# ------------------------------------------------------------------------------- textures
# Each returns float32 gray levels; render_image clips them to 45..210 so defects keep contrast.


def _grid(h: int, w: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by ``angle``, for patterns at any orientation."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    return xx * c + yy * s, -xx * s + yy * c


def _metal(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    """Brushed metal: noise smeared along one direction, under a gentle light gradient."""
    n = int(max(h, w) * 1.5) + 2
    noise = rng.standard_normal((n, n), dtype=np.float32)
    streaks = cv2.GaussianBlur(noise, (0, 0), sigmaX=rng.uniform(8, 20) * s, sigmaY=0.7)
    rot = cv2.getRotationMatrix2D((n / 2, n / 2), float(rng.uniform(0, 180)), 1.0)
    streaks = cv2.warpAffine(streaks, rot, (n, n), flags=cv2.INTER_LINEAR)
    y0, x0 = (n - h) // 2, (n - w) // 2
    streaks = streaks[y0 : y0 + h, x0 : x0 + w]
    streaks *= rng.uniform(6, 14) / (streaks.std() + 1e-6)
    u, _ = _grid(h, w, rng.uniform(0, 2 * np.pi))
    gradient = (u / max(h, w)) * rng.uniform(10, 30)
    fine = rng.standard_normal((h, w), dtype=np.float32) * 2
    return rng.uniform(100, 165) + streaks + gradient + fine


def _fabric(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    """Woven cloth: warp and weft as two orthogonal sinusoids, their product for the crossings."""
    u, v = _grid(h, w, rng.uniform(0, np.pi))
    p1, p2 = rng.uniform(4, 9, size=2) * max(s, 0.75)
    a, b = np.sin(2 * np.pi * u / p1), np.sin(2 * np.pi * v / p2)
    amp = rng.uniform(6, 14)
    weave = amp * (a + b) * 0.5 + amp * 0.6 * a * b
    return rng.uniform(95, 165) + weave + rng.standard_normal((h, w), dtype=np.float32) * 3


def _tiles(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    """Ceramic tiles: a grid with grout lines and a different brightness per tile."""
    size = rng.uniform(20, 42) * s
    grout = max(1, round(rng.uniform(1, 2.5) * s))
    yy, xx = np.mgrid[0:h, 0:w]
    gx, gy = xx + rng.uniform(0, size), yy + rng.uniform(0, size)
    ix, iy = (gx // size).astype(int), (gy // size).astype(int)
    shades = rng.normal(0, 10, size=(iy.max() + 1, ix.max() + 1))
    img = rng.uniform(110, 170) + shades[iy, ix]
    is_grout = ((gx % size) < grout) | ((gy % size) < grout)
    img = np.where(is_grout, img - rng.uniform(25, 45), img)
    return (img + rng.standard_normal((h, w)) * 3).astype(np.float32)


_TEXTURES: dict[str, Callable[[np.random.Generator, int, int, float], np.ndarray]] = {
    "metal": _metal,
    "fabric": _fabric,
    "tiles": _tiles,
}


# ------------------------------------------------------------------------------- defects
# Each draws a shade patch centred in a square canvas; draw_defect crops and places it.


def _canvas(extent: float) -> tuple[np.ndarray, float]:
    size = int(np.ceil(extent)) + 10
    return np.zeros((size, size), np.uint8), size / 2


def _poly(points: np.ndarray) -> np.ndarray:
    """Sub-pixel points for cv2 (shift=4 fixed point), so shapes are not snapped to a grid."""
    return np.round(points * 16).astype(np.int32).reshape(-1, 1, 2)


def _scratch(rng: np.random.Generator, side: int, s: float) -> np.ndarray:
    length = rng.uniform(0.15, 0.5) * side
    canvas, c = _canvas(length)
    t = np.linspace(-0.5, 0.5, 4)[:, None] * length
    angle = rng.uniform(0, np.pi)
    along = np.array([np.cos(angle), np.sin(angle)])
    across = np.array([-along[1], along[0]])
    bend = rng.normal(0, 0.015 * length, size=(4, 1))
    bend[[0, -1]] = 0  # straight-ish: only the inner points stray from the line
    pts = c + t * along + bend * across
    thickness = max(1, round(rng.integers(1, 3) * s))
    cv2.polylines(canvas, [_poly(pts)], False, 255, thickness, cv2.LINE_AA, shift=4)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return canvas.astype(np.float32) / 255 * sign * rng.uniform(0.4, 0.65)


def _spot(rng: np.random.Generator, side: int, s: float) -> np.ndarray:
    r = rng.uniform(3, 8) * s
    sigma = max(0.6, 0.3 * r)
    canvas, c = _canvas(2 * r + 6 * sigma)
    axes = (round(r * 16), round(r * rng.uniform(0.7, 1.0) * 16))
    centre = (round(c * 16), round(c * 16))
    cv2.ellipse(canvas, centre, axes, rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA, shift=4)
    soft = cv2.GaussianBlur(canvas.astype(np.float32) / 255, (0, 0), sigma)
    return -soft / max(soft.max(), 1e-6) * rng.uniform(0.4, 0.65)


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, steps: int, step: float):
    """A jagged path: each segment turns a little, but never far from the overall heading."""
    pts, angle = [start], heading
    for _ in range(steps):
        angle = heading + np.clip(angle - heading + rng.normal(0, 0.7), -0.9, 0.9)
        pts.append(pts[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
    return np.array(pts)


def _crack(rng: np.random.Generator, side: int, s: float) -> np.ndarray:
    extent = rng.uniform(12, 35) * s
    canvas, c = _canvas(2 * extent)
    step = max(1.5, 2.5 * s)
    heading = rng.uniform(0, 2 * np.pi)
    main = _walk(rng, np.array([c, c]), heading, max(3, round(extent / step)), step)
    main -= (main.max(0) + main.min(0)) / 2 - c  # centre the walk on the canvas
    paths = [main]
    for _ in range(rng.integers(1, 3)):
        at = main[rng.integers(1, len(main) - 1)]
        turn = rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
        paths.append(_walk(rng, at, heading + turn, max(2, len(main) // 3), step))
    thickness = max(1, round(s))
    cv2.polylines(canvas, [_poly(p) for p in paths], False, 255, thickness, cv2.LINE_8, shift=4)
    return canvas.astype(np.float32) / 255 * -rng.uniform(0.6, 0.85)


def _inclusion(rng: np.random.Generator, side: int, s: float) -> np.ndarray:
    r = rng.uniform(5, 12) * s / 2
    canvas, c = _canvas(2 * r + 4)
    n = int(rng.integers(7, 12))  # vertices evenly spread, then jittered: a blob, not a sliver
    angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n + rng.uniform(0, 2 * np.pi)
    radii = r * rng.uniform(0.6, 1.0, size=angles.size)
    pts = c + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
    cv2.fillPoly(canvas, [_poly(pts)], 255, cv2.LINE_8, shift=4)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    rim = cv2.dilate(canvas, kernel, iterations=max(1, round(s))) > 0
    inside = canvas > 0
    shade = np.where(inside, rng.uniform(0.55, 0.85), 0.0)
    return np.where(rim & ~inside, -rng.uniform(0.45, 0.65), shade).astype(np.float32)


_DEFECTS: dict[str, Callable[[np.random.Generator, int, float], np.ndarray]] = {
    "scratch": _scratch,
    "spot": _spot,
    "crack": _crack,
    "inclusion": _inclusion,
}


def mask_box(mask: np.ndarray) -> Box | None:
    """Tight (x1, y1, x2, y2) of the non-zero pixels, x2/y2 exclusive; None when empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_iou(a: Box, b: Box) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def draw_defect(
    kind: str, rng: np.random.Generator, height: int, width: int, avoid: Sequence[Box] = ()
) -> tuple[np.ndarray, Box] | None:
    """One defect placed fully inside the image (1 px margin), overlapping ``avoid`` by IoU < 0.3.

    Returns (shade, box): ``shade`` is float32 (height, width), zero outside the defect, and
    ``box`` is exactly the tight bounds of ``shade != 0``. None when no free spot was found.
    """
    patch = _DEFECTS[kind](rng, min(height, width), min(height, width) / 128)
    patch[np.abs(patch) < MIN_SHADE] = 0
    tight = mask_box(patch)
    if tight is None:
        return None
    patch = patch[tight[1] : tight[3], tight[0] : tight[2]]
    ph, pw = patch.shape
    if ph > height - 2 or pw > width - 2:
        return None
    for _ in range(PLACEMENT_TRIES):
        x, y = int(rng.integers(1, width - pw)), int(rng.integers(1, height - ph))
        box = (x, y, x + pw, y + ph)
        if all(box_iou(box, b) < MAX_IOU for b in avoid):
            shade = np.zeros((height, width), np.float32)
            shade[y : y + ph, x : x + pw] = patch
            return shade, box
    return None


def apply_shade(gray: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """Darken towards 0 / brighten towards 255 by the shade; zero shade leaves pixels as is."""
    return np.where(shade > 0, gray + shade * (255 - gray), gray + shade * gray)


# ------------------------------------------------------------------------------- images


def image_rng(seed: int, index: int) -> np.random.Generator:
    """Image ``index``'s own stream: reproducible alone, whatever the number of images."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))


def background_plan(cfg: SynthConfig) -> np.ndarray:
    """Which images are defect-free: exactly round(images * fraction), spread at random."""
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    flags = np.zeros(cfg.images, bool)
    flags[rng.permutation(cfg.images)[: round(cfg.images * cfg.background_fraction)]] = True
    return flags


def render_image(cfg: SynthConfig, index: int, background: bool) -> Rendered:
    """Draw image ``index``: a random texture, then (unless background) 1..max_defects defects."""
    rng = image_rng(cfg.seed, index)
    h, w = cfg.height, cfg.width
    texture = cfg.textures[int(rng.integers(len(cfg.textures)))]
    base = np.clip(_TEXTURES[texture](rng, h, w, min(h, w) / 128), 45, 210)
    gray, boxes, labels = base, [], []
    if not background:
        counts = np.arange(1, cfg.max_defects + 1)
        p_count = 0.5**counts / (0.5**counts).sum()  # 1 defect is twice as likely as 2, ...
        names = list(cfg.classes)
        p_class = np.array([cfg.classes[n] for n in names], float)
        for _ in range(int(rng.choice(counts, p=p_count))):
            label = int(rng.choice(len(names), p=p_class / p_class.sum()))
            drawn = draw_defect(names[label], rng, h, w, avoid=boxes)
            if drawn is not None:
                gray = apply_shade(gray, drawn[0])
                boxes.append(drawn[1])
                labels.append(label)
    tint = 1 + rng.uniform(-0.04, 0.04, size=3)  # mild colour cast, as under real lighting

    def to_bgr(g: np.ndarray) -> np.ndarray:
        return np.clip(np.round(g[..., None] * tint), 0, 255).astype(np.uint8)

    return Rendered(to_bgr(gray), to_bgr(base), boxes, labels)


def assign_val(labels: Sequence[Sequence[int]], fraction: float) -> np.ndarray:
    """Val flags, stratified by each image's rarest class so rare classes land in both splits.

    :func:`defectdet.data.split.stratify` with the generator's settings: rarity by instances
    (ties: the higher class index), evenly spaced picks instead of random ones (each group sends
    at least one image and at most all but one to val when it has two or more), and a repair
    pass that moves an image across only where that empties no other class from a split.
    """
    k = 1 + max((c for ls in labels for c in ls), default=-1)
    presence = np.zeros((len(labels), k), bool)
    instances = np.zeros(k, np.int64)
    for i, ls in enumerate(labels):
        presence[i, list(ls)] = True
        np.add.at(instances, list(ls), 1)
    rarity = instances * k + np.arange(k)[::-1]  # by instances, ties: the higher class first
    return stratify(presence, fraction, rarity=rarity, force_repair=False)


# ------------------------------------------------------------------------------- output


def _coco(cfg: SynthConfig, images: list[dict], anns: list[dict]) -> dict:
    info = {"description": "defectdet synthetic defects", **asdict(cfg)}
    cats = [{"id": i + 1, "name": n, "supercategory": "defect"} for i, n in enumerate(cfg.classes)]
    return {"info": info, "images": images, "annotations": anns, "categories": cats}


def _check_output(out: Path, cfg: SynthConfig, overwrite: bool) -> None:
    """Refuse to mix runs; with overwrite, drop generated images a larger earlier run left."""
    ann_dir = out / "annotations"
    if ann_dir.is_dir() and any(ann_dir.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{ann_dir} is not empty: refusing to overwrite an existing dataset "
            "(choose another folder, or use --overwrite / overwrite=True)"
        )
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder")
    pattern = re.compile(r"^(\d{6})\.(jpg|png)$")
    for p in (out / "images").glob("*") if overwrite else ():
        m = pattern.match(p.name)
        if m and (int(m[1]) > cfg.images or m[2] != cfg.image_format):
            p.unlink()


def synthesize(
    out: str | Path,
    cfg: SynthConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    overwrite: bool = False,
) -> dict:
    """Write ``out/images/*`` and COCO ``out/annotations/{train,val}.json``; return a summary.

    Annotations are written last, so an interrupted run leaves no dataset that looks complete.
    """
    cfg = cfg or SynthConfig()
    validate(cfg)
    out = Path(out)
    _check_output(out, cfg, overwrite)
    (out / "images").mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if cfg.image_format == "jpg" else []
    flags = background_plan(cfg)
    entries, anns, labels = [], [], []
    for i in range(cfg.images):
        r = render_image(cfg, i, bool(flags[i]))
        name = f"images/{i + 1:06d}.{cfg.image_format}"
        ok, buf = cv2.imencode(f".{cfg.image_format}", r.image, params)
        if not ok:
            raise OSError(f"could not encode {name}")
        (out / name).write_bytes(buf.tobytes())
        entries.append({"id": i + 1, "file_name": name, "width": cfg.width, "height": cfg.height})
        for (x1, y1, x2, y2), label in zip(r.boxes, r.labels, strict=True):
            w, h = x2 - x1, y2 - y1
            ann = {"id": len(anns) + 1, "image_id": i + 1, "category_id": label + 1}
            anns.append(ann | {"bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
        labels.append(r.labels)
        if progress is not None:
            progress(i + 1, cfg.images)
    val = assign_val(labels, cfg.val_fraction)
    for split, keep in (("train", ~val), ("val", val)):
        ids = {e["id"] for e, k in zip(entries, keep, strict=True) if k}
        split_anns = [a for a in anns if a["image_id"] in ids]
        doc = _coco(cfg, [e for e in entries if e["id"] in ids], split_anns)
        write_json(out / "annotations" / f"{split}.json", doc)
    per_class = {n: sum(ls.count(k) for ls in labels) for k, n in enumerate(cfg.classes)}
    return {
        "images": cfg.images,
        "background_images": sum(1 for ls in labels if not ls),
        "annotations": len(anns),
        "per_class": per_class,
        "splits": {"train": int((~val).sum()), "val": int(val.sum())},
        "out": str(out),
    }
