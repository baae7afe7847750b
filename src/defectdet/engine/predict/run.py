"""``defectdet predict``: batched (optionally tiled) inference over images, streamed to disk.

The detections come from the one inference path (:mod:`defectdet.engine.inference.run`), the
same as ``evaluate`` and train-time validation; results are written and flushed per batch
(:mod:`.writers`), so memory does not grow with the number of images.

Thresholds: ``--conf`` and optional per-class ``--class-conf``. The model keeps every
detection above the lowest of them and the AP floor, so ``images.csv`` can report per-class
maximum scores below the thresholds and ``predictions.json`` can be scored with pycocotools;
a box counts (``predictions.csv``, the verdict) when it passes its own class's threshold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defectdet.config import PredictConfig, validate
from defectdet.console import warn
from defectdet.engine.gallery import PredictionGallery, check_gallery_folder, write_gallery
from defectdet.engine.inference.detectors import Detector, load_detector
from defectdet.engine.inference.preprocess import ImageMeta
from defectdet.engine.inference.run import Detections, Inference
from defectdet.engine.inference.sources import list_sources
from defectdet.engine.predict.writers import RESULT_FILES, PredictionWriter
from defectdet.engine.progress import RateProgress
from defectdet.errors import ConfigError, OutputExistsError
from defectdet.io import unique_dir, write_json

MAX_LISTED_SKIPS = 100


@dataclass
class PredictOutput:
    """Where and what ``predict`` writes (besides the options of :class:`PredictConfig`)."""

    out: Path | None = None  # None = unique_dir(project, name)
    project: Path = Path("runs/predict")
    name: str = "exp"
    exist_ok: bool = False
    save_images: bool = False
    progress: bool = True
    gallery: Path | None = None  # contact sheets for review (engine.gallery)
    gallery_size: int = 24


def output_dir(opts: PredictOutput) -> Path:
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


# ---------------------------------------------------------------------------- the run
def predict(
    source: str | Path,
    weights: str | Path,
    cfg: PredictConfig | None = None,
    output: PredictOutput | None = None,
    detector: Detector | None = None,
) -> dict:
    """Predict every image of ``source`` into the output folder; return the summary.

    ``detector`` replaces the one built from ``weights`` (tests inject fakes; see
    :class:`~defectdet.engine.inference.detectors.Detector`).
    """
    from defectdet.model import resolve_device

    cfg, output = validate(cfg or PredictConfig()), output or PredictOutput()
    rt = cfg.runtime
    device = resolve_device(rt.device)
    if rt.half and device.type != "cuda":
        raise ConfigError(
            f"--half needs a CUDA device (fp16 inference is slow or unsupported on {device}); "
            "drop --half or pass --device cuda"
        )
    sources = list_sources(source)
    out_dir = output_dir(output)  # refuse before the (slow) model load
    if output.gallery is not None:
        check_gallery_folder(output.gallery, output.gallery_size, output.exist_ok)
    if detector is None:
        detector = load_detector(weights, rt.backend, device, rt.half)
    inference = Inference(detector, cfg.infer, cfg.tiles)
    run = _Run(inference)
    if output.gallery is not None:
        run.gallery = PredictionGallery(inference.class_names, output.gallery_size)
        run.paths = [s.path for s in sources]
    t0 = time.perf_counter()
    with (
        PredictionWriter(
            out_dir,
            inference.class_names,
            output.save_images,
            getattr(detector, "image_head", False),
        ) as writer,
        RateProgress("predict", len(sources), output.progress) as bar,
    ):
        for batch in inference.run(sources, rt.batch_size, rt.workers, output.save_images):
            t = time.perf_counter()
            for meta, det in batch:
                run.add(meta, det, writer)
            writer.flush()
            run.write_seconds += time.perf_counter() - t
            bar.advance(len(batch))
        t = time.perf_counter()
        writer.finish()
        run.write_seconds += time.perf_counter() - t
    summary = run.summary(len(sources), time.perf_counter() - t0, out_dir)
    if run.gallery is not None:
        sheets = write_gallery(run.gallery.items(), output.gallery)
        summary["gallery"] = [str(p) for p in sheets]
    write_json(out_dir / "summary.json", summary)
    return summary


@dataclass
class _Run:
    """Counters of one prediction run, never the predictions themselves."""

    inference: Inference
    done: int = 0
    defect_images: int = 0
    n_skipped: int = 0
    skipped: list[str] = field(default_factory=list)
    write_seconds: float = 0.0
    boxes_per_class: np.ndarray | None = None
    gallery: PredictionGallery | None = None
    paths: list[Path] = field(default_factory=list)

    def add(self, meta: ImageMeta, det: Detections | None, writer: PredictionWriter) -> None:
        if det is None:
            warn(f"skipping unreadable image {meta.name}: {meta.error}")
            self.n_skipped += 1
            if len(self.skipped) < MAX_LISTED_SKIPS:
                self.skipped.append(meta.name)
            return
        keep = det.passed(self.inference.thresholds)
        writer.add(meta.index + 1, meta.name, meta.width, meta.height, det, keep, meta.image)
        if self.gallery is not None:
            self.gallery.add(self.paths[meta.index], meta.name, det, self.inference.thresholds)
        self.done += 1
        self.defect_images += bool(keep.any())
        if self.boxes_per_class is None:
            self.boxes_per_class = np.zeros(len(self.inference.class_names), dtype=np.int64)
        np.add.at(self.boxes_per_class, det.labels[keep], 1)

    def summary(self, total: int, seconds: float, out_dir: Path) -> dict:
        names = self.inference.class_names
        counts = self.boxes_per_class if self.boxes_per_class is not None else np.zeros(len(names))
        timings = dict(self.inference.timings, write=self.write_seconds)
        return {
            "images": self.done,
            "skipped": self.n_skipped,
            "skipped_files": self.skipped,
            "defect_images": self.defect_images,
            "ok_images": self.done - self.defect_images,
            "boxes": int(counts.sum()),
            "boxes_per_class": dict(zip(names, map(int, counts), strict=True)),
            "seconds": round(seconds, 3),
            "images_per_s": round(self.done / seconds, 2) if seconds > 0 else None,
            "timings_s": {k: round(max(v, 0.0), 3) for k, v in timings.items()},
            "thresholds": dict(zip(names, self.inference.thresholds.tolist(), strict=True)),
            "threshold_source": self.inference.threshold_source,
            "out": str(out_dir),
            "inputs": total,
        }
