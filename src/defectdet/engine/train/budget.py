"""``--time-budget``: the step count fitted to measured speed, so that a run, its last
validation and its calibration end on time with the learning rate annealed (a part of
:class:`~defectdet.engine.train.loop.Trainer`)."""

from __future__ import annotations

import math

from defectdet.engine.train.schedule import set_total_steps


class BudgetMixin:
    PROBE_STEPS = 8  # steps timed (after 2 warm-up ones) before the first fit

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
        learning-rate schedule is redefined over them (warm-up and cosine end on time)."""
        spent = self.state["elapsed"] + (self.clock() - self._epoch_start)
        per_epoch = max(len(self.loader), 1)
        val = self._val_seconds or 0.05 * self.budget  # before the first validation: 5 %
        left_epochs = max(self.state["epochs"] - self.state["epoch"], 1)
        validations = math.ceil(left_epochs / max(self.cfg.run.eval_interval, 1))
        reserve = val * (validations + 1)  # the last one, then calibration
        steps = max(int((self.budget - spent - reserve) / max(per_step, 1e-9)), 1)
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
        }

    def _set_schedule(self, total_steps: int) -> None:
        """Warm-up and decay defined over ``total_steps`` (from where training stands)."""
        set_total_steps(self.scheduler, self.cfg.optim, total_steps)
