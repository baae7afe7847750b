"""Choosing the device, and the CUDA-only speed-ups (AMP, channels-last) that go with it."""

from __future__ import annotations

import re

import torch

from defectdet.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a usable ``torch.device``.

    Raises:
        ConfigError: CUDA asked for but not available, a GPU index that does not exist, or an
            unknown spec.
    """
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        why = (
            "this PyTorch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
        )
        raise ConfigError(f"device {spec!r} requested but CUDA is not available ({why}); use cpu")
    if match.group(1) is None:
        return torch.device("cuda")
    index, count = int(match.group(1)), torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"device {spec!r} does not exist: {count} GPU(s) visible, cuda:0..cuda:{count - 1}"
        )
    return torch.device("cuda", index)


def autocast_enabled(cfg_amp: bool | None, device: torch.device) -> bool:
    """Mixed precision: ``None`` = on for CUDA; always off on CPU (slower there, and bf16 only)."""
    return device.type == "cuda" and cfg_amp is not False


def channels_last_enabled(cfg_value: bool | None, device: torch.device) -> bool:
    """Channels-last memory format: ``None`` = on for CUDA (tensor cores), off on CPU."""
    return device.type == "cuda" if cfg_value is None else bool(cfg_value)


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 where the GPU supports it, else fp16 (bf16 on CPU)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def to_model_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 3, S, S) from a loader -> float 0..1 on ``device`` (converted there: 4x less
    to move)."""
    batch = images.to(device, non_blocking=True)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch.float().div_(255) if batch.dtype == torch.uint8 else batch
