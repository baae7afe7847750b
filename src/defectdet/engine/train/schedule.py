"""Optimiser and learning-rate schedule: linear warm-up, then cosine or step decay, per step."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from defectdet.config import OptimConfig
from defectdet.errors import ConfigError

#: Warm-up starts at this fraction of the base learning rate (torchvision's references: 0.001).
WARMUP_START = 0.001
#: Cosine decay ends at this fraction of the base learning rate.
COSINE_FLOOR = 0.01


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {cfg.lr}")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of the base learning rate after ``step`` optimiser steps."""
    warmup = min(cfg.warmup_iters, max(total_steps - 1, 0))
    if step < warmup:
        return WARMUP_START + (1 - WARMUP_START) * step / warmup
    if cfg.schedule == "step":
        done = step / max(total_steps, 1)
        return 0.1 ** sum(done >= m for m in cfg.step_milestones)
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    return COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, cfg=cfg, total_steps=total_steps)
    )


def set_total_steps(
    scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: OptimConfig, total_steps: int
) -> None:
    """Redefine the schedule over ``total_steps`` (a time budget fitted to measured speed); the
    rate of the current step follows at once."""
    scheduler.lr_lambdas = [partial(lr_factor, cfg=cfg, total_steps=total_steps)] * len(
        scheduler.lr_lambdas
    )
    step = scheduler.last_epoch
    for group, fn, base in zip(
        scheduler.optimizer.param_groups, scheduler.lr_lambdas, scheduler.base_lrs, strict=True
    ):
        group["lr"] = base * fn(step)


class EmaRamp:
    """The EMA's decay after ``updates`` updates: ``decay * (1 - exp(-updates / tau))``, as in
    YOLO's ModelEMA, with ``tau`` a tenth of the run, so the early average is not dragged
    towards the random initialisation. The run's length can change after the EMA is built
    (``--time-budget`` fixes it from the measured speed): :meth:`set_total_steps` follows it."""

    def __init__(self, decay: float, total_steps: int) -> None:
        self.decay = decay
        self.set_total_steps(total_steps)

    def set_total_steps(self, total_steps: int) -> None:
        self.tau = max(min(total_steps, 20_000) / 10, 1.0)

    def __call__(self, updates: int) -> float:
        return self.decay * (1 - math.exp(-float(updates) / self.tau))


def build_ema(
    model: nn.Module, decay: float, total_steps: int
) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of ``model``'s weights and buffers (torch's
    ``AveragedModel``) with an :class:`EmaRamp` as ``.ramp``, or None when ``decay`` is 0."""
    if not decay:
        return None
    ramp = EmaRamp(decay, total_steps)

    @torch.no_grad()
    def update(averaged: list, current: list, updates) -> None:
        if not averaged[0].is_floating_point():  # counters (BatchNorm's batches seen): copy
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1 - ramp(updates))

    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    ema.ramp = ramp
    return ema
