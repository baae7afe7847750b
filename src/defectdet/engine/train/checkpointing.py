"""What a run saves and restores: ``best.pt`` (inference weights, the averaged ones with
``--ema``), ``last.pt`` (everything to resume exactly) and, with ``--save-period``, snapshots
``epochN.pt`` (inference weights, as best.pt); a part of
:class:`~defectdet.engine.train.loop.Trainer`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from defectdet import __version__
from defectdet.config import to_dict
from defectdet.engine.evaluate.metrics import MetricsResult
from defectdet.errors import CheckpointError
from defectdet.model import save_checkpoint
from defectdet.model.restore import training_state


class CheckpointMixin:
    def _payload(self, full: bool, metrics: MetricsResult | None = None) -> dict[str, Any]:
        # With --ema the averaged weights are the model (validated, best.pt); last.pt also
        # keeps the raw ones to train on.
        evaluated = self.ema.module if self.ema is not None and not full else self.model
        payload: dict[str, Any] = {
            "kind": "defectdet-checkpoint",
            "version": __version__,
            "model": evaluated.state_dict(),
            "config": to_dict(self.cfg),
            **self.resolved.to_dict(),
            "classes": list(self.resolved.spec.class_names),
            "epoch": self.state["epoch"],
            "metrics": metrics.to_dict() if metrics is not None else {},
            # so evaluate and calibrate never score the model on images it learned from
            "trained_on": self.data.trained_on,
        }
        if full:
            payload |= {
                "state": dict(self.state),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "history": self.history.rows,
                "rng": {"torch": torch.get_rng_state()},
            }
            if self.ema is not None:
                payload["ema"] = self.ema.state_dict()
        return payload

    def _load_state(self, ckpt: dict, source: str | Path) -> None:
        try:
            self.model.load_state_dict(training_state(ckpt["model"]))
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.sampler.load_state_dict(ckpt["sampler"])
            if self.ema is not None:
                self.ema.load_state_dict(ckpt["ema"])
            self.state.update(ckpt["state"])
            self._set_schedule(self.state["total_steps"])
            self.history.rows = list(ckpt.get("history", []))
            torch.set_rng_state(ckpt["rng"]["torch"])
        except (KeyError, IndexError, AttributeError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"cannot resume from {source}: {exc}") from exc

    def _save_last(self) -> None:
        if self.info.is_main:
            save_checkpoint(self.run_dir / "weights" / "last.pt", self._payload(full=True))

    def _save_snapshot(self, epoch: int, metrics: MetricsResult | None) -> None:
        """``weights/epoch{epoch}.pt`` (epochs counted from 1) every ``--save-period`` epochs:
        the inference weights and that epoch's validation metrics, no operating point."""
        period = self.cfg.run.save_period
        if period and epoch % period == 0 and self.info.is_main:
            path = self.run_dir / "weights" / f"epoch{epoch}.pt"
            save_checkpoint(path, self._payload(False, metrics))
