"""``defectdet predict``: batched (optionally tiled) inference over images, streamed to disk.

DataLoader workers decode and letterbox the next batches while the model runs on this one
(:mod:`defectdet.engine.predict_data`); results are written and flushed per batch
(:mod:`defectdet.engine.writers`), so memory does not grow with the number of images.

Thresholds: a global ``conf`` and optional per-class ones. The model itself keeps everything
above the lowest of them, so ``images.csv`` can report per-class maximum scores below the
thresholds, and each box is then kept only if it passes its own class's threshold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import batched_nms

from defectdet.console import warn
from defectdet.engine.backends import PostprocessSettings, load_detector
from defectdet.engine.predict_data import ImageMeta, PredictDataset, make_predict_loader
from defectdet.engine.progress import RateProgress
from defectdet.engine.sources import list_sources
from defectdet.engine.writers import RESULT_FILES, PredictionWriter
from defectdet.errors import ConfigError, OutputExistsError
from defectdet.io import unique_dir, write_json

MAX_LISTED_SKIPS = 100


@dataclass
class PredictOptions:
    """Everything ``predict`` takes besides SOURCE (CLI option defaults)."""

    weights: Path
    backend: str = "torch"
    out: Path | None = None  # None = unique_dir(project, name)
    project: Path = Path("runs/predict")
    name: str = "exp"
    exist_ok: bool = False
    conf: float = 0.25
    class_conf: str | dict[str, float] | None = None  # "name=T,..." or a mapping
    iou: float = 0.5
    max_det: int = 100
    batch_size: int = 8
    workers: int = -1  # auto
    device: str = "auto"
    half: bool = False
    tile: int = 0
    tile_overlap: float = 0.2
    save_images: bool = False
    progress: bool = True


def parse_class_conf(spec: str | dict[str, float] | None, classes: list[str]) -> dict[int, float]:
    """``"scratch=0.4,crack=0.1"`` (or a mapping) -> {class index: threshold}.

    Raises:
        ConfigError: an unknown class (the message lists the known ones) or a bad number.
    """
    if not spec:
        return {}
    items = spec.items() if isinstance(spec, dict) else _split_pairs(spec)
    out: dict[int, float] = {}
    for name, value in items:
        if name not in classes:
            raise ConfigError(
                f"--class-conf: unknown class {name!r}; the model's classes are "
                f"{', '.join(classes)}"
            )
        _check_unit(float(value), f"--class-conf {name}")
        out[classes.index(name)] = float(value)
    return out


def _split_pairs(text: str) -> list[tuple[str, float]]:
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.rpartition("=")
        try:
            pairs.append((name.strip(), float(value)))
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--class-conf: expected name=THRESHOLD,..., got {part!r}")
    return pairs


def _check_unit(value: float, option: str) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{option} must be between 0 and 1, got {value:g}")


def check_options(opts: PredictOptions) -> None:
    """Range checks, each naming its option."""
    _check_unit(opts.conf, "--conf")
    checks = [
        (0 < opts.iou <= 1, "--iou must be in (0, 1]"),
        (opts.max_det >= 1, "--max-det must be ≥ 1"),
        (opts.batch_size >= 1, "--batch-size must be ≥ 1"),
        (opts.workers >= -1, "--workers must be ≥ 0 (or -1 for auto)"),
        (opts.tile == 0 or opts.tile >= 32, "--tile must be at least 32 px (or 0 = off)"),
        (0 <= opts.tile_overlap < 0.95, "--tile-overlap must be in [0, 0.95)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def output_dir(opts: PredictOptions) -> Path:
    """``--out`` (refused if it already holds results, unless ``exist_ok``), or a fresh
    ``project/name``, ``project/name2``..."""
    if opts.out is None:
        return unique_dir(opts.project, opts.name, opts.exist_ok)
    found = [f for f in RESULT_FILES if (opts.out / f).exists()]
    if found and not opts.exist_ok:
        raise OutputExistsError(
            f"{opts.out} already holds predictions ({', '.join(found)}); pass --exist-ok to "
            "replace them, or choose another --out"
        )
    return opts.out


def class_thresholds(conf: float, per_class: dict[int, float], k: int) -> np.ndarray:
    """(K,) threshold of each class: its own, else the global one."""
    return np.array([per_class.get(c, conf) for c in range(k)], dtype=np.float64)


# ---------------------------------------------------------------------------- the run
def predict(
    source: str | Path,
    opts: PredictOptions,
    detector=None,
) -> dict:
    """Predict every image of ``source`` into the output folder; return the summary.

    ``detector`` replaces the one built from ``opts.weights`` (tests inject fakes); it must
    have ``class_names``, ``image_size``, ``configure(PostprocessSettings)`` and be callable on
    uint8 (B, 3, S, S) batches.
    """
    from defectdet.model import resolve_device

    check_options(opts)
    device = resolve_device(opts.device)
    if opts.half and device.type != "cuda":
        raise ConfigError(
            f"--half needs a CUDA device (fp16 inference is slow or unsupported on {device}); "
            "drop --half or pass --device cuda"
        )
    sources = list_sources(source)
    out_dir = output_dir(opts)  # refuse before the (slow) model load
    if detector is None:
        detector = load_detector(opts.weights, opts.backend, device, opts.half)
    names = list(detector.class_names)
    thresholds = class_thresholds(opts.conf, parse_class_conf(opts.class_conf, names), len(names))
    detector.configure(PostprocessSettings(float(thresholds.min()), opts.iou, opts.max_det))
    dataset = PredictDataset(
        sources, detector.image_size, opts.tile, opts.tile_overlap, keep_image=opts.save_images
    )
    loader = make_predict_loader(dataset, opts.batch_size, opts.workers)
    run = _Run(detector, thresholds, opts, names)
    t0 = time.perf_counter()
    with (
        PredictionWriter(out_dir, names, opts.save_images) as writer,
        RateProgress("predict", len(sources), opts.progress) as bar,
    ):
        wait = time.perf_counter()
        for tiles, metas in loader:
            run.timings["wait_for_data"] += time.perf_counter() - wait
            run.batch(tiles, metas, writer)
            bar.advance(len(metas))
            wait = time.perf_counter()
        t = time.perf_counter()
        writer.finish()
        run.timings["write"] += time.perf_counter() - t
    summary = run.summary(len(sources), time.perf_counter() - t0, out_dir)
    write_json(out_dir / "summary.json", summary)
    return summary


class _Run:
    """State of one prediction run: counters and timings, never the predictions themselves."""

    def __init__(
        self, detector, thresholds: np.ndarray, opts: PredictOptions, names: list[str]
    ) -> None:
        self.detector, self.thresholds, self.opts, self.names = detector, thresholds, opts, names
        self.boxes_per_class = np.zeros(len(names), dtype=np.int64)
        self.done = self.defect_images = 0
        self.skipped: list[str] = []
        self.n_skipped = 0
        self.timings = {"wait_for_data": 0.0, "model": 0.0, "postprocess": 0.0, "write": 0.0}

    def batch(self, tiles: torch.Tensor, metas: list[ImageMeta], writer: PredictionWriter) -> None:
        """Detect, map back, threshold and write one loader batch; flush at the end."""
        t = time.perf_counter()
        preds = self._detect(tiles)
        t = self._tick("model", t)
        start = 0
        for meta in metas:
            if meta.error is not None:
                self._skip(meta)
                continue
            det = merge_tiles(
                preds[start : start + meta.tiles], meta, self.opts.iou, self.opts.max_det
            )
            start += meta.tiles
            keep = det["scores"] >= self.thresholds[det["labels"]]
            t = self._tick("postprocess", t)
            writer.add(meta.index + 1, meta.name, meta.width, meta.height, det, keep, meta.image)
            self.done += 1
            self.defect_images += bool(keep.any())
            np.add.at(self.boxes_per_class, det["labels"][keep], 1)
            t = self._tick("write", t)
        writer.flush()
        self._tick("write", t)

    def _tick(self, what: str, since: float) -> float:
        """Add the time since ``since`` to ``what``; return now."""
        now = time.perf_counter()
        self.timings[what] += now - since
        return now

    def _detect(self, tiles: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Run the detector over all tiles in chunks of ``batch_size`` (a tiled image may
        bring many)."""
        preds: list[dict[str, torch.Tensor]] = []
        if not len(tiles):
            return preds  # every image of the batch was unreadable
        for chunk in tiles.split(self.opts.batch_size):
            preds.extend(self.detector(chunk))
        return preds

    def _skip(self, meta: ImageMeta) -> None:
        warn(f"skipping unreadable image {meta.name}: {meta.error}")
        self.n_skipped += 1
        if len(self.skipped) < MAX_LISTED_SKIPS:
            self.skipped.append(meta.name)

    def summary(self, total: int, seconds: float, out_dir: Path) -> dict:
        return {
            "images": self.done,
            "skipped": self.n_skipped,
            "skipped_files": self.skipped,
            "defect_images": self.defect_images,
            "ok_images": self.done - self.defect_images,
            "boxes": int(self.boxes_per_class.sum()),
            "boxes_per_class": dict(zip(self.names, self.boxes_per_class.tolist(), strict=True)),
            "seconds": round(seconds, 3),
            "images_per_s": round(self.done / seconds, 2) if seconds > 0 else None,
            "timings_s": {k: round(max(v, 0.0), 3) for k, v in self.timings.items()},
            "thresholds": dict(zip(self.names, self.thresholds.tolist(), strict=True)),
            "out": str(out_dir),
            "inputs": total,
        }


def merge_tiles(
    preds: list[dict[str, torch.Tensor]], meta: ImageMeta, iou: float, max_det: int
) -> dict[str, np.ndarray]:
    """Detections of an image's tiles (model pixels) -> original pixels as numpy, clipped to
    the image; with several tiles, merged by class-wise NMS at ``iou`` and cut to ``max_det``."""
    boxes = [
        p["boxes"].float() / meta.scale + torch.from_numpy(off).repeat(2)
        for p, off in zip(preds, meta.offsets, strict=True)
    ]
    b = torch.cat(boxes) if boxes else torch.zeros((0, 4))
    s = torch.cat([p["scores"].float() for p in preds]) if preds else torch.zeros(0)
    lab = torch.cat([p["labels"] for p in preds]) if preds else torch.zeros(0, dtype=torch.int64)
    b[:, 0::2] = b[:, 0::2].clamp(0, meta.width)
    b[:, 1::2] = b[:, 1::2].clamp(0, meta.height)
    if len(preds) > 1:
        keep = batched_nms(b, s, lab, iou)[:max_det]  # sorted by score
        b, s, lab = b[keep], s[keep], lab[keep]
    return {"boxes": b.numpy(), "scores": s.numpy(), "labels": lab.numpy().astype(np.int64)}
