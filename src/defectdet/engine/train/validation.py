"""Validation during a run and best.pt's operating point at its end (a part of
:class:`~defectdet.engine.train.loop.Trainer`).

Each validation keeps its detections down to the calibration floor (when calibration would use
the same NMS and detection cap), and those of the validation that made best.pt are kept: the
operating point is then chosen on them, with no second pass over the validation split (on a
1,000-image split at 512 px that pass costs minutes of a time budget). A resumed run that has
not validated since calibrates with its own pass.
"""

from __future__ import annotations

from defectdet.config import InferConfig, to_yaml
from defectdet.console import out, warn
from defectdet.data.catalog import Catalog
from defectdet.engine.calibrate.operating_point import CALIBRATION_FLOOR, choose_operating_point
from defectdet.engine.evaluate.metrics import MetricsResult
from defectdet.engine.evaluate.score import score_catalog
from defectdet.engine.inference.detectors import TorchDetector
from defectdet.engine.inference.run import Detections
from defectdet.engine.train.history import early_pick_caveat
from defectdet.io import write_text
from defectdet.model import load_checkpoint, save_checkpoint


class ValidationMixin:
    _val_dets: list[Detections] | None = None  # the last validation's, to the calibration floor
    _best_dets: list[Detections] | None = None  # those of the validation that made best.pt

    def validate(self) -> MetricsResult:
        """The model scored on the validation split by the same path as ``evaluate``."""
        keep = CALIBRATION_FLOOR if self.calibration_reuses_validation() else None
        metrics, dets = self._score(self.data.val, keep)
        self._val_dets = dets if keep is not None else None
        return metrics

    def _score(
        self, catalog: Catalog, keep_floor: float | None = None
    ) -> tuple[MetricsResult, list[Detections]]:
        """The model being trained (its average, with --ema) scored on ``catalog``."""
        spec, cfg = self.resolved.spec, self.cfg
        model = self.ema.module if self.ema is not None else self.model
        detector = TorchDetector.for_spec(model, spec, self.device, self.amp, self.channels_last)
        rt = cfg.runtime()
        return score_catalog(
            detector, catalog, cfg.infer, rt.batch_size, rt.workers, keep_floor=keep_floor
        )

    def calibration_reuses_validation(self) -> bool:
        """Calibration infers with the default NMS IoU and detection cap: a validation run
        with the same ones gives it the very detections it needs."""
        plain, infer = InferConfig(), self.cfg.infer
        return infer.iou == plain.iou and infer.max_det == plain.max_det

    def _warn_early_pick(self) -> None:
        """Warn when best.pt is an early validation picked by AP50 of classes with few boxes."""
        counts = self.data.val.instance_counts().tolist()
        caveat = early_pick_caveat(
            self.history.rows,
            self.cfg.run.select_metric,
            self.state["best_epoch"],
            dict(zip(self.resolved.spec.class_names, counts, strict=True)),
        )
        if caveat:
            warn(caveat)

    def _calibrate(self) -> None:
        """Choose best.pt's operating point on the validation split (``--target-recall``,
        ``--max-false-alarms``, default max F1) and store it in best.pt and resolved.yaml."""
        from defectdet.engine.calibrate.render import render_operating_point
        from defectdet.engine.calibrate.run import calibrate_detector, with_operating_point
        from defectdet.model import load_model

        best = self.run_dir / "weights" / "best.pt"
        if not self.data.val.num_images or not best.is_file():
            return
        ckpt = load_checkpoint(best)
        if self._best_dets is not None:
            dets = [d.above(CALIBRATION_FLOOR) for d in self._best_dets]
            op = choose_operating_point(self.data.val, dets, self.cfg.calibrate, "validation")
        else:
            model, spec = load_model(ckpt, self.device, where=str(best))
            detector = TorchDetector.for_spec(
                model, spec, self.device, self.amp, self.channels_last
            )
            rt = self.cfg.runtime()
            op = calibrate_detector(
                detector, self.data.val, self.cfg.calibrate, "validation", rt.batch_size, rt.workers
            )
        save_checkpoint(best, {**ckpt, **with_operating_point(ckpt, op)})
        resolved = self.resolved.to_dict() | {"operating_point": op.to_dict()}
        write_text(self.run_dir / "resolved.yaml", to_yaml(resolved))
        render_operating_point(op, out)
        out.print("best.pt holds these thresholds: predict, evaluate and export use them")
