"""The one inference path, from images to detections in original pixels, shared by train-time
validation, ``evaluate`` and ``predict`` (so the three give the same boxes and scores for the
same images and checkpoint).

:class:`Inference` sets the detector's post-processing from the inference options, runs it
over batches from :mod:`.preprocess` (whole images or tiles), maps boxes back to the original
image (:func:`merge_tiles`) and tells which boxes pass their class threshold.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torchvision.ops import batched_nms

from defectdet.config import DEFAULT_CONF, InferConfig, TileConfig
from defectdet.config.values import parse_number_map
from defectdet.data.preprocess import to_original
from defectdet.engine.inference.detectors import Detector
from defectdet.engine.inference.preprocess import (
    ImageMeta,
    InferenceDataset,
    make_inference_loader,
)
from defectdet.engine.inference.sources import SourceImage
from defectdet.engine.inference.tile_merge import merge_tile_views
from defectdet.errors import ConfigError
from defectdet.model.postprocess import AP_SCORE_FLOOR, PostprocessSettings


@dataclass
class Detections:
    """Predictions for one image: ``boxes`` (N, 4) xyxy in original pixels, ``scores`` (N,),
    ``labels`` (N,) 0-based class ids; ``image_id`` says which image (a catalogue id, or the
    input's position); ``image_score``: the image head's defect probability (models with one;
    the highest of a tiled image's tiles), else None."""

    image_id: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    image_score: float | None = None

    @property
    def defect_score(self) -> float:
        """How defective the image looks, for ranking images (AUROC, ROC, recall at a false-alarm
        rate): the best box score; with an image head, the mean of that and the head's
        probability (see docs/benchmarks.md for the rules compared)."""
        box = float(self.scores.max()) if len(self.scores) else 0.0
        return box if self.image_score is None else (box + self.image_score) / 2

    def above(self, floor: float) -> Detections:
        """A copy holding only the detections scoring above ``floor`` (as the decoding keeps
        them: strictly)."""
        keep = self.scores > floor
        return replace(
            self, boxes=self.boxes[keep], scores=self.scores[keep], labels=self.labels[keep]
        )

    def passed(self, thresholds: np.ndarray) -> np.ndarray:
        """(N,) bool: the score reaches its class's threshold ((K,) array)."""
        return self.scores >= thresholds[self.labels] if len(self.labels) else np.zeros(0, bool)


def class_thresholds(
    infer: InferConfig, class_names: Sequence[str], stored: dict[str, float] | None = None
) -> tuple[np.ndarray, str]:
    """(K,) threshold of each class and where they came from.

    ``--class-conf`` wins for the classes it names; then ``--conf`` for all others; without
    ``--conf``, the checkpoint's calibrated thresholds (``stored``), else the uncalibrated
    default :data:`~defectdet.config.DEFAULT_CONF`.

    Raises:
        ConfigError: a class the model does not have (the message lists its classes).
    """
    try:
        per_class = parse_number_map(infer.class_conf, "--class-conf", 0.0, 1.0)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    unknown = [n for n in per_class if n not in class_names]
    if unknown:
        raise ConfigError(
            f"--class-conf: unknown class {unknown[0]!r}; the model's classes are "
            f"{', '.join(class_names)}"
        )
    if infer.conf is not None:
        base, source = dict.fromkeys(class_names, infer.conf), "--conf"
    elif stored:
        base, source = {c: stored.get(c, DEFAULT_CONF) for c in class_names}, "calibrated"
    else:
        base, source = dict.fromkeys(class_names, DEFAULT_CONF), "default (uncalibrated)"
    if per_class:
        source += " and --class-conf"
    values = [per_class.get(c, base[c]) for c in class_names]
    return np.array(values, dtype=np.float64), source


class Inference:
    """Runs a detector over images with the inference options.

    The detector keeps every detection above ``min(floor, lowest threshold)`` (``floor``: the AP
    floor, lower for calibration), so average precision sees the low-scoring ones and outputs
    can report per-class maxima below the thresholds; :attr:`thresholds` (see
    :func:`class_thresholds`) then decide which boxes count. A detector may carry an
    ``operating_point`` (calibrated thresholds, from its checkpoint).
    """

    def __init__(
        self,
        detector: Detector,
        infer: InferConfig,
        tiles: TileConfig | None = None,
        floor: float = AP_SCORE_FLOOR,
    ):
        self.detector, self.infer, self.tiles = detector, infer, tiles or TileConfig()
        # No --tile: tiled as the model was trained (train --train-tile), else whole images.
        given = self.tiles.tile
        self.tile = int(getattr(detector, "train_tile", 0) or 0) if given is None else given
        self.class_names = list(detector.class_names)
        stored = getattr(detector, "operating_point", None) or {}
        self.thresholds, self.threshold_source = class_thresholds(
            infer, self.class_names, stored.get("thresholds")
        )
        self.floor = float(min(floor, self.thresholds.min()))
        detector.configure(PostprocessSettings(self.floor, infer.iou, infer.max_det))
        self.timings = {"wait_for_data": 0.0, "model": 0.0, "postprocess": 0.0}

    def run(
        self,
        sources: Sequence[SourceImage],
        batch_size: int,
        workers: int,
        keep_image: bool = False,
    ) -> Iterator[list[tuple[ImageMeta, Detections | None]]]:
        """Per loader batch: each image's meta and detections (None when it was unreadable;
        ``meta.error`` says why). ``Detections.image_id`` is the input's position."""
        for batch in self.tile_detections(sources, batch_size, workers, keep_image):
            t = time.perf_counter()
            out = [(m, None if p is None else merge_tiles(p, m, self.infer)) for m, p in batch]
            self._tick("postprocess", t)
            yield out

    def tile_detections(
        self,
        sources: Sequence[SourceImage],
        batch_size: int,
        workers: int,
        keep_image: bool = False,
    ) -> Iterator[list[tuple[ImageMeta, list[dict[str, torch.Tensor]] | None]]]:
        """Per loader batch: each image's meta and the detector's output for each of its tiles
        (model pixels, before :func:`merge_tiles`; None when the image was unreadable)."""
        dataset = InferenceDataset(
            sources,
            self.detector.image_size,
            self.tile,
            self.tiles.tile_overlap,
            keep_image=keep_image,
        )
        loader = make_inference_loader(dataset, batch_size, workers)
        wait = time.perf_counter()
        for tiles, metas in loader:
            t = self._tick("wait_for_data", wait)
            preds = self._detect(tiles, batch_size)
            self._tick("model", t)
            out, start = [], 0
            for meta in metas:
                out.append(
                    (meta, None if meta.error is not None else preds[start : start + meta.tiles])
                )
                start += meta.tiles
            yield out
            wait = time.perf_counter()

    def _tick(self, what: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[what] += now - since
        return now

    def _detect(self, tiles: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """The detector over all tiles, in chunks of ``batch_size`` (a tiled image may bring
        many)."""
        preds: list[dict[str, torch.Tensor]] = []
        for chunk in tiles.split(batch_size) if len(tiles) else ():
            preds.extend(self.detector(chunk))
        return preds


def merge_tiles(
    preds: list[dict[str, torch.Tensor]], meta: ImageMeta, infer: InferConfig
) -> Detections:
    """Detections of an image's tiles (model pixels) -> original pixels, clipped to the image;
    each object's views in overlapping tiles merged (:mod:`.tile_merge`); class-wise NMS at
    ``infer.iou``; cut to ``infer.max_det``."""
    boxes = [
        torch.from_numpy(
            to_original(p["boxes"].float().numpy(), meta.scale, tuple(off), meta.width, meta.height)
        )
        for p, off in zip(preds, meta.offsets.tolist(), strict=True)
    ]
    b = torch.cat(boxes) if boxes else torch.zeros((0, 4))
    s = torch.cat([p["scores"].float() for p in preds]) if preds else torch.zeros(0)
    lab = torch.cat([p["labels"] for p in preds]) if preds else torch.zeros(0, dtype=torch.int64)
    if meta.tiles > 1 and meta.tile:  # before NMS, which would drop parts of a split object
        per_tile = torch.tensor([len(x) for x in boxes], dtype=torch.int64)
        tile_ids = torch.repeat_interleave(torch.arange(len(boxes)), per_tile)
        keep, merged = merge_tile_views(b, s, lab, tile_ids, meta)
        b, s, lab = merged, s[keep], lab[keep]
    # Again after mapping, for one tile too: the model's NMS saw boxes clipped to the padded
    # square input; clipped to the real image they may overlap more than --iou.
    keep = batched_nms(b, s, lab, infer.iou)[: infer.max_det]  # sorted by score
    b, s, lab = b[keep], s[keep], lab[keep]
    image = [float(p["image_score"]) for p in preds if "image_score" in p]
    return Detections(
        meta.index, b.numpy(), s.numpy(), lab.numpy().astype(np.int64), max(image, default=None)
    )
