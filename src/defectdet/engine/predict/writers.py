"""Streaming outputs of ``predict``: rows are appended and flushed after every batch, so memory
stays flat over any number of images and a crash keeps everything written before it.

Files in the output folder:

- ``predictions.csv``: one row per kept box: file_name, class, score, x1, y1, x2, y2 (original
  image pixels, xyxy).
- ``images.csv``: one row per image: file_name, width, height, verdict (``defect`` when any box
  passes its threshold, else ``ok``), n_boxes (kept boxes), and ``max_score_<class>`` per class:
  the highest score of that class among all detections the model returned, below the threshold
  too (empty when none), for choosing thresholds later; from a model with an image head
  (``train --image-head``) also ``image_score`` (the head's defect probability) and
  ``defect_score`` (the score images are ranked by, as in ``evaluate``'s AUROC).
- ``predictions.json``: COCO results (image_id, category_id 1..K, bbox xywh, score) plus
  ``file_name``, ``class_name`` and ``above_threshold``: every detection the model returned
  (down to the AP floor), unrounded, so pycocotools scores it exactly as ``evaluate`` does;
  built at the end from ``predictions.jsonl``, which is
  appended per batch and removed once the JSON is complete.
- ``images/``: with ``--save-images``, copies with the boxes drawn.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from defectdet.engine.gallery import draw_boxes
from defectdet.engine.inference.run import Detections
from defectdet.errors import DefectdetError
from defectdet.io import atomic_open, ensure_dir

RESULT_FILES = ("predictions.csv", "images.csv", "predictions.json", "predictions.jsonl")
_WRITABLE = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class _Stream:
    """A text file whose failures (a full disk mid-run) become one message naming it; what
    was flushed before stays on disk."""

    def __init__(self, path: Path, fh: IO[str]) -> None:
        self.path, self.fh = path, fh

    def _call(self, what: str, *args):
        try:
            return getattr(self.fh, what)(*args)
        except OSError as exc:
            raise DefectdetError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def write(self, text: str) -> int:
        return self._call("write", text)

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        if not self.fh.closed:
            self._call("close")

    @property
    def closed(self) -> bool:
        return self.fh.closed


class PredictionWriter:
    """Append per-image results; ``finish()`` writes ``predictions.json``. Use as a context
    manager: files are closed (and what was written stays) whatever happens."""

    def __init__(
        self,
        out_dir: Path,
        class_names: list[str],
        save_images: bool = False,
        image_head: bool = False,
    ) -> None:
        self.out_dir, self.class_names, self.image_head = out_dir, class_names, image_head
        ensure_dir(out_dir)
        self._files: list[_Stream] = []
        self._boxes = self._csv(
            "predictions.csv", ["file_name", "class", "score", "x1", "y1", "x2", "y2"]
        )
        self._images = self._csv(
            "images.csv",
            [
                "file_name",
                "width",
                "height",
                "verdict",
                "n_boxes",
                *(f"max_score_{c}" for c in class_names),
                *(("image_score", "defect_score") if image_head else ()),
            ],
        )
        self._jsonl = self._open("predictions.jsonl")
        self.images_dir = out_dir / "images" if save_images else None
        self._saved_names: set[str] = set()

    def _open(self, name: str) -> _Stream:
        path = self.out_dir / name
        try:
            fh = _Stream(path, open(path, "w", encoding="utf-8", newline=""))  # noqa: SIM115
        except OSError as exc:
            raise DefectdetError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self._files.append(fh)
        return fh

    def _csv(self, name: str, header: list[str]):
        writer = csv.writer(self._open(name))
        writer.writerow(header)
        return writer

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.close()
        except DefectdetError:
            if exc_type is None:  # else the first error is the one to report
                raise

    def close(self) -> None:
        """Close every file (all of them, even when one fails to; then its error)."""
        error = None
        for fh in self._files:
            try:
                fh.close()
            except DefectdetError as exc:
                error = error or exc
        if error is not None:
            raise error

    def add(
        self,
        image_id: int,
        name: str,
        width: int,
        height: int,
        det: Detections,
        keep: np.ndarray,
        image: np.ndarray | None = None,
    ) -> None:
        """One image: ``det`` in original pixels; ``keep`` (N,) bool: passes its class
        threshold. Kept boxes go to the CSV; every detection to the JSON (for scoring)."""
        for i, ((x1, y1, x2, y2), s, c) in enumerate(
            zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True)
        ):
            cls = self.class_names[c]
            if keep[i]:
                box = [round(v, 2) for v in (x1, y1, x2, y2)]
                self._boxes.writerow([name, cls, round(s, 5), *box])
            rec = {
                "image_id": image_id,
                "category_id": c + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": s,
                "file_name": name,
                "class_name": cls,
                "above_threshold": bool(keep[i]),
            }
            self._jsonl.write(json.dumps(rec) + "\n")
        maxes = _max_per_class(det.scores, det.labels, len(self.class_names))
        n_kept = int(keep.sum())
        self._images.writerow(
            [
                name,
                width,
                height,
                "defect" if n_kept else "ok",
                n_kept,
                *("" if m is None else round(m, 5) for m in maxes),
                *(self._image_scores(det) if self.image_head else ()),
            ]
        )
        if self.images_dir is not None and image is not None:
            self._save_image(
                name, image, det.boxes[keep], det.scores[keep], det.labels[keep].astype(np.int64)
            )

    @staticmethod
    def _image_scores(det: Detections) -> tuple:
        image = "" if det.image_score is None else round(det.image_score, 5)
        return image, round(det.defect_score, 5)

    def flush(self) -> None:
        """Push rows to the OS (after each batch): a crash later loses nothing written here."""
        for fh in self._files:
            fh.flush()

    def finish(self) -> Path:
        """Convert ``predictions.jsonl`` into ``predictions.json`` (streamed, atomically)."""
        self.close()
        src, dst = self.out_dir / "predictions.jsonl", self.out_dir / "predictions.json"
        with open(src, encoding="utf-8") as fin, atomic_open(dst, "w", encoding="utf-8") as fout:
            fout.write("[")
            for i, line in enumerate(fin):
                fout.write(("," if i else "") + "\n" + line.rstrip("\n"))
            fout.write("\n]\n")
        os.unlink(src)
        return dst

    # ------------------------------------------------------------------ drawing
    def _save_image(
        self,
        name: str,
        image: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        assert self.images_dir is not None
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        draw_boxes(bgr, boxes, scores, [self.class_names[c] for c in labels], labels)
        target = self.images_dir / self._unique_name(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(target.suffix, bgr)
        if ok:
            target.write_bytes(buf.tobytes())

    def _unique_name(self, name: str) -> str:
        """Keep relative sub-folders; absolute names keep their base name only; a writable
        extension; ``_2``, ``_3``... on collisions."""
        rel = Path(name.lstrip("/")) if not Path(name).is_absolute() else Path(Path(name).name)
        if rel.suffix.lower() not in _WRITABLE:
            rel = rel.with_suffix(".png")
        candidate, n = rel, 2
        while candidate.as_posix() in self._saved_names:
            candidate = rel.with_name(f"{rel.stem}_{n}{rel.suffix}")
            n += 1
        self._saved_names.add(candidate.as_posix())
        return candidate.as_posix()


def _max_per_class(scores: np.ndarray, labels: np.ndarray, k: int) -> list[float | None]:
    out: list[float | None] = [None] * k
    for s, c in zip(scores.tolist(), labels.tolist(), strict=True):
        if out[c] is None or s > out[c]:
            out[c] = s
    return out
