"""``--time-budget``: the step count fitted to measured speed, so that a run, its last
validation and its calibration end on time with the learning rate annealed (a part of
:class:`~defectdet.engine.train.loop.Trainer`)."""

from __future__ import annotations

import math

import defectdet.engine.train.distributed as ddp
from defectdet.engine.train.schedule import set_total_steps


class BudgetMixin:
    PROBE_STEPS = 8  # steps timed (after 2 warm-up ones) before the first fit
    VAL_SHARE = 0.15  # periodic validations take at most this share of the budget
    VAL_PROBE_IMAGES = 32  # validation images timed to foresee a validation's cost

    def _budget_probe(self) -> None:
        """Fit the schedule to the budget once the first steps have been timed."""
        if not self.budget or len(self._probe) > self.PROBE_STEPS + 2:
            return
        self._probe.append(self.clock())
        if len(self._probe) == self.PROBE_STEPS + 2:
            per_step = (self._probe[-1] - self._probe[1]) / self.PROBE_STEPS
            self._fit_budget(per_step)
            self._probe.append(self._probe[-1])  # done

    def _fit_budget(self, per_step: float) -> None:
        """Steps that fit in what is left of the budget at ``per_step`` seconds each, keeping
        room for the validations still to come, the final validation and (unless it reuses that
        validation's detections) calibration; the learning-rate schedule is redefined over them
        (warm-up and cosine end on time).

        Periodic validations are thinned (a longer effective --eval-interval) so that together
        they take at most :attr:`VAL_SHARE` of the budget: on a large validation split they
        would otherwise eat the training time."""
        spent = self.state["elapsed"] + (self.clock() - self._epoch_start)
        per_epoch = max(len(self.loader), 1)
        if not self._val_seconds:
            self._val_seconds = self._time_validation()
        val = self._val_seconds
        # The last validation, then calibration: on that validation's detections when it can
        # (no second pass), else a pass of its own.
        calibration = 0.0 if self.calibration_reuses_validation() else val
        available = self.budget - spent - val - calibration
        train_epoch = per_epoch * max(per_step, 1e-9)
        rough_epochs = self.state["epoch"] + max(available, 0.0) / train_epoch
        allowed = max(int(self.VAL_SHARE * self.budget / max(val, 1e-9)), 1)
        self.eval_every = max(self.cfg.run.eval_interval, math.ceil(rough_epochs / allowed))
        epoch_cost = train_epoch + val / self.eval_every
        steps = max(int(max(available, 0.0) / epoch_cost * per_epoch), 1)
        total = self.state["global_step"] + steps
        if self.cfg.run.max_steps:
            total = min(total, self.cfg.run.max_steps)
        # Under DDP every rank must stop at the same step: rank 0's clock decides for all.
        total, self.eval_every = ddp.broadcast(self.info, (total, self.eval_every))
        epochs = math.ceil(total / per_epoch)
        self.state.update(total_steps=total, epochs=epochs)
        self._set_schedule(total)
        self.resolved.schedule = {
            "time_budget_minutes": self.cfg.optim.time_budget,
            "seconds_per_step": round(per_step, 4),
            "total_steps": total,
            "epochs": epochs,
            "eval_interval": self.eval_every,
        }

    def _time_validation(self) -> float:
        """Seconds one validation will take before any was run: the validation path (the same
        preprocessing, tiles and scoring) timed on the split's first images, scaled to all of
        them. A guess from the step time was off by half on a 1,000-image split and, since a
        budget keeps room for the last validation, cost minutes of training. Rank 0 only (the
        others follow its fit)."""
        val = self.data.val
        if not self.info.is_main or not val.num_images:
            return 0.0
        n = min(val.num_images, self.VAL_PROBE_IMAGES)
        sample = val.subset(val.images["image_id"].iloc[:n].tolist())
        t = self.clock()
        self._score(sample)
        return (self.clock() - t) * val.num_images / n

    def _set_schedule(self, total_steps: int) -> None:
        """Warm-up, decay and the EMA's ramp defined over ``total_steps`` (from where training
        stands). The EMA was built before the fit, for a provisional million steps: left so, its
        ramp would keep the average at the current weights for the whole run."""
        set_total_steps(self.scheduler, self.cfg.optim, total_steps)
        if self.ema is not None:
            self.ema.ramp.set_total_steps(total_steps)
