"""The end of a run: best.pt's operating point chosen on the validation split (a part of
:class:`~defectdet.engine.train.loop.Trainer`)."""

from __future__ import annotations

from defectdet.config import to_yaml
from defectdet.console import out
from defectdet.engine.inference.detectors import TorchDetector
from defectdet.io import write_text
from defectdet.model import load_checkpoint, save_checkpoint


class CalibrationMixin:
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
        model, spec = load_model(ckpt, self.device, where=str(best))
        detector = TorchDetector.for_spec(model, spec, self.device, self.amp, self.channels_last)
        rt = self.cfg.runtime()
        op = calibrate_detector(
            detector, self.data.val, self.cfg.calibrate, "validation", rt.batch_size, rt.workers
        )
        save_checkpoint(best, {**ckpt, **with_operating_point(ckpt, op)})
        resolved = self.resolved.to_dict() | {"operating_point": op.to_dict()}
        write_text(self.run_dir / "resolved.yaml", to_yaml(resolved))
        render_operating_point(op, out)
        out.print("best.pt holds these thresholds: predict, evaluate and export use them")
