"""A model for inference from a checkpoint: rebuilt from its saved :class:`ModelSpec` (no loss
config, no pretrained downloads: the checkpoint holds every weight), in eval mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectdet.errors import CheckpointError
from defectdet.model.build import build_model
from defectdet.model.checkpoint import load_checkpoint
from defectdet.model.device import resolve_device
from defectdet.model.spec import ModelSpec


def checkpoint_spec(ckpt: dict[str, Any], where: str = "checkpoint") -> ModelSpec:
    """The model spec of a loaded checkpoint (written by 0.2+, or a 0.1 config)."""
    if "model_spec" in ckpt:
        return ModelSpec.from_dict(ckpt["model_spec"], where)
    return ModelSpec.from_legacy_config(ckpt.get("config"), where)


def inference_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A training state dict without the loss's own state (the normaliser's EMA)."""
    return {k: v for k, v in state.items() if ".normalizer." not in k}


def training_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved training state dict in today's key names (0.1 kept the normaliser on the head)."""
    return {
        k.replace("head.normalizer.", "head.criterion.normalizer."): v for k, v in state.items()
    }


def load_model(
    path_or_ckpt: str | Path | dict[str, Any],
    device: str | torch.device = "cpu",
    where: str = "",
) -> tuple[nn.Module, ModelSpec]:
    """The checkpoint's model on ``device`` in eval mode, and its spec.

    Raises:
        CheckpointError: unreadable file, no spec, or weights that do not fit the spec.
    """
    if isinstance(device, str):
        device = resolve_device(device)
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    where = where or ("checkpoint" if isinstance(path_or_ckpt, dict) else str(path_or_ckpt))
    spec = checkpoint_spec(ckpt, where)
    try:
        model = build_model(spec)
    except Exception as exc:  # a spec this version cannot build: one message, exit 3
        raise CheckpointError(
            f"{where}: saved model spec does not fit this version: {exc}"
        ) from exc
    try:
        model.load_state_dict(inference_state(ckpt["model"]))
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: weights do not fit the saved spec: {exc}") from exc
    return model.to(device).eval(), spec
