"""Hard-negative mining (``--hard-negatives``): the current model scores the defect-free
training images and the sampler draws the flagged ones more often (a part of
:class:`~defectdet.engine.train.loop.Trainer`)."""

from __future__ import annotations

import time

import numpy as np

import defectdet.engine.train.distributed as ddp
from defectdet.engine.inference.detectors import TorchDetector


class MiningMixin:
    def _mine_if_due(self, epoch: int, validated: bool) -> dict[str, float] | None:
        """Hard-negative mining after a validation and at least every ``--mine-interval``
        epochs (not after the last): rank 0 scores, every rank gets the scores."""
        cfg = self.cfg.sampler
        if not cfg.hard_negatives or self._out_of_steps() or epoch + 1 >= self.state["epochs"]:
            return None
        if not (validated or (epoch + 1) % cfg.mine_interval == 0):
            return None
        result = self._mine() if self.info.is_main else None
        result = ddp.broadcast(self.info, result)
        if result is None:
            return None
        scores, stats = result
        self.sampler.inner.set_hardness(scores)
        return stats

    def _mine(self) -> tuple[np.ndarray, dict[str, float]] | None:
        """Score defect-free training images (all, or a random ``--mine-max`` of them) with the
        current model in eval mode, batched and without gradients: their best box score, and
        the share flagged at the operating thresholds (the mined false-alarm rate)."""
        from defectdet.engine.calibrate.operating_point import CALIBRATION_FLOOR
        from defectdet.engine.evaluate.score import detect_catalog
        from defectdet.engine.inference.run import Inference

        t0 = time.perf_counter()
        train, cfg = self.data.train, self.cfg
        rows = np.flatnonzero(train.background_mask())
        if not len(rows):
            return None
        if cfg.sampler.mine_max and len(rows) > cfg.sampler.mine_max:
            rng = np.random.default_rng([cfg.run.seed, self.state["epoch"], 7])
            rows = np.sort(rng.choice(rows, cfg.sampler.mine_max, replace=False))
        ids = train.images["image_id"].to_numpy()
        detector = TorchDetector.for_spec(
            self.model, self.resolved.spec, self.device, self.amp, self.channels_last
        )
        inference = Inference(detector, cfg.infer, floor=CALIBRATION_FLOOR)
        rt = cfg.runtime()
        found = {
            d.image_id: (
                float(d.scores.max(initial=0.0)),
                bool(d.passed(inference.thresholds).any()),
            )
            for d in detect_catalog(inference, train.subset(ids[rows]), rt.batch_size, rt.workers)
        }
        previous = self.sampler.inner.hardness
        scores = previous.copy() if previous is not None else np.full(len(ids), np.nan)
        flagged = []
        for r in rows:
            score, passed = found.get(int(ids[r]), (0.0, False))
            scores[r] = score
            flagged.append(passed)
        stats = {
            "mined_false_alarm_rate": float(np.mean(flagged)),
            "mine_seconds": round(time.perf_counter() - t0, 2),
        }
        return scores, stats
