"""``--time-budget``: the step count fitted to measured speed, so that a run, its last
validation and its calibration end on time with the learning rate annealed (a part of
:class:`~defectdet.engine.train.loop.Trainer`)."""

from __future__ import annotations

import math

from defectdet.config import TileConfig
from defectdet.data.preprocess import tile_grid
from defectdet.engine.train.schedule import set_total_steps


class BudgetMixin:
    PROBE_STEPS = 8  # steps timed (after 2 warm-up ones) before the first fit
    VAL_SHARE = 0.15  # periodic validations take at most this share of the budget

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
        room for the validations still to come and the final validation and calibration; the
        learning-rate schedule is redefined over them (warm-up and cosine end on time).

        Periodic validations are thinned (a longer effective --eval-interval) so that together
        they take at most :attr:`VAL_SHARE` of the budget: on a large validation split they
        would otherwise eat the training time."""
        spent = self.state["elapsed"] + (self.clock() - self._epoch_start)
        per_epoch = max(len(self.loader), 1)
        val = self._val_seconds or self._val_guess(per_step)
        available = self.budget - spent - 2 * val  # the last validation, then calibration
        train_epoch = per_epoch * max(per_step, 1e-9)
        rough_epochs = self.state["epoch"] + max(available, 0.0) / train_epoch
        allowed = max(int(self.VAL_SHARE * self.budget / max(val, 1e-9)), 1)
        self.eval_every = max(self.cfg.run.eval_interval, math.ceil(rough_epochs / allowed))
        epoch_cost = train_epoch + val / self.eval_every
        steps = max(int(max(available, 0.0) / epoch_cost * per_epoch), 1)
        total = self.state["global_step"] + steps
        if self.cfg.run.max_steps:
            total = min(total, self.cfg.run.max_steps)
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

    def _val_guess(self, per_step: float) -> float:
        """Seconds of one validation before any was timed: a forward pass costs about a third
        of a training step per image (or tile: validation tiles as --train-tile trained); half
        a step per image leaves room for scoring."""
        val = self.data.val
        if not self.info.is_main or not val.num_images:
            return 0.0
        images = val.num_images
        if self.resolved.spec.train_tile:
            w, h = (int(val.images[k].median()) for k in ("width", "height"))
            images *= len(tile_grid(w, h, self.resolved.spec.train_tile, TileConfig().tile_overlap))
        return images * per_step / max(self.cfg.optim.batch_size, 1) * 0.5

    def _set_schedule(self, total_steps: int) -> None:
        """Warm-up and decay defined over ``total_steps`` (from where training stands)."""
        set_total_steps(self.scheduler, self.cfg.optim, total_steps)
