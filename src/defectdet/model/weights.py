"""Checkpoints (saved atomically, loaded without unpickling code) and pretrained weights.

A checkpoint is a ``torch.save``d dict of tensors and plain Python data only: ``torch.load`` runs
with ``weights_only=True``, so a file carrying pickled objects (which could run code when
unpickled) is refused rather than executed. ``save_checkpoint`` checks the payload first, so a
run cannot write a checkpoint that it would later refuse to load.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn

from defectdet.config import LossConfig, ModelConfig, from_dict
from defectdet.errors import CheckpointError, ConfigError
from defectdet.io import atomic_open

_PLAIN = (
    Tensor,
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    torch.dtype,
    torch.device,
    torch.Size,
)


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, then rename).

    Expected keys: ``model`` (state dict), ``config`` (``TrainConfig.to_dict()``), ``classes``,
    ``epoch``, and any optimizer / scheduler / scaler state dicts and RNG states. Only tensors
    and plain data are allowed (numpy arrays: convert with ``torch.from_numpy`` or ``.tolist()``).
    """
    _check_plain(payload, "payload")
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)


def _check_plain(obj: Any, where: str) -> None:
    """Raise CheckpointError naming the first value ``weights_only`` loading would refuse."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str | int):
                raise CheckpointError(f"checkpoint {where} has a {type(key).__name__} key {key!r}")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, list | tuple | set | frozenset):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"checkpoint {where} is a {type(obj).__module__}.{type(obj).__qualname__}; "
        "checkpoints hold only tensors and plain data (convert it first)"
    )


def _safe_load(path: str | Path, map_location: Any, what: str) -> Any:
    """``torch.load(weights_only=True)`` with each failure turned into a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise CheckpointError(
                f"{what} {path} carries pickled Python objects beyond tensors and plain data "
                f"({found.group(1)}); refusing to load it (it could run code)"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable defectdet {what}: not a PyTorch file, or pickle data "
            f"beyond tensors and plain data ({_first_line(exc)})"
        ) from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, IndexError) as exc:
        reason = "empty or truncated file" if isinstance(exc, EOFError) else _first_line(exc)
        raise CheckpointError(f"{path} is not a readable defectdet {what}: {reason}") from None


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1][:200] if lines else type(exc).__name__


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``; never unpickles code.

    Raises:
        CheckpointError: missing file, unreadable/truncated file, pickled objects, or a file
            that is not a defectdet checkpoint (no ``model`` state dict).
    """
    ckpt = _safe_load(path, map_location, "checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), Mapping):
        raise CheckpointError(
            f"{path} is not a readable defectdet checkpoint: expected a dict with a 'model' "
            "state dict (is it a bare state dict? pass it as --backbone-weights instead)"
        )
    return ckpt


def model_from_checkpoint(
    path_or_dict: str | Path | dict[str, Any], device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model from a checkpoint's saved config, load its weights, in eval mode.

    No pretrained weights are downloaded: the checkpoint holds all of them.
    """
    from defectdet.model.build import build_model  # build imports this module
    from defectdet.model.device import resolve_device

    if isinstance(device, str):
        device = resolve_device(device)
    ckpt = path_or_dict if isinstance(path_or_dict, dict) else load_checkpoint(path_or_dict)
    where = path_or_dict if not isinstance(path_or_dict, dict) else "checkpoint"
    config = ckpt.get("config")
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise CheckpointError(f"{where} has no saved model config (config.model)")
    try:
        cfg = from_dict(ModelConfig, dict(config["model"]), "model")
        loss_dict = config.get("loss")
        loss = from_dict(LossConfig, dict(loss_dict), "loss") if loss_dict else None
    except ConfigError as exc:
        raise CheckpointError(f"{where}: saved config does not fit this version: {exc}") from exc
    model = build_model(cfg, loss, load_weights=False)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: weights do not fit the saved config: {exc}") from exc
    return model.to(device).eval(), cfg


# ---------------------------------------------------------------------------- pretrained
def hub_state_dict(url: str, what: str, advice: str) -> dict[str, Tensor]:
    """Download (or take from torch hub's cache) a torchvision state dict.

    Raises:
        ConfigError: the file is not cached and cannot be downloaded.
    """
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=True, check_hash=True, weights_only=True
        )
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        raise ConfigError(
            f"cannot download {what} (offline?). Put the file at {cache}, {advice} ({exc})"
        ) from exc


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """A bare state dict, or the ``model`` / ``state_dict`` entry of a checkpoint file."""
    obj = _safe_load(path, "cpu", "weights file")
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a readable state dict (name -> tensor)")
    return dict(obj)


def load_matching(model: nn.Module, state: Mapping[str, Tensor], source: str) -> list[str]:
    """Load every tensor of ``state`` whose name and shape fit ``model`` (for fine-tuning).

    Head tensors that do not fit (another class count, anchor count or head type) are skipped
    and listed; anything outside the head that does not fit means another architecture.

    Returns:
        One line per skipped or missing head tensor.
    """
    own = model.state_dict()
    skipped, bad, keep = [], [], {}
    for name, value in state.items():
        if name.endswith("num_batches_tracked") or ".normalizer." in name:
            continue  # BatchNorm counters; a loss EMA from another dataset
        target = own.get(name)
        if target is not None and target.shape == value.shape:
            keep[name] = value
            continue
        why = (
            "not in this model"
            if target is None
            else f"{tuple(value.shape)} vs {tuple(target.shape)}"
        )
        (skipped if name.startswith("head.") else bad).append(f"{name}: {why}")
    missing = [
        n
        for n in own
        if n not in state and not n.endswith("num_batches_tracked") and ".normalizer." not in n
    ]
    bad += [f"{n}: missing from {source}" for n in missing if not n.startswith("head.")]
    if bad:
        raise ConfigError(
            f"{source} was trained with another backbone/FPN setup; {len(bad)} tensors do not "
            f"fit, e.g. {'; '.join(bad[:3])}"
        )
    skipped += [f"{n}: missing from {source}" for n in missing if n.startswith("head.")]
    model.load_state_dict(keep, strict=False)
    return sorted(set(skipped))


def load_backbone_weights(net: nn.Module, backbone: str, spec: str) -> None:
    """Load ``spec`` ("none" | "imagenet" | PATH) into a torchvision classifier ``net``.

    "imagenet" is the backbone's ``DEFAULT`` weights through torch hub's cache (a pre-filled
    ``$TORCH_HOME`` works offline). A PATH may hold a classifier state dict, a DataParallel one,
    or a detection model's ``backbone.body.*`` tensors.
    """
    if spec == "none":
        return
    if spec == "imagenet":
        url = torchvision.models.get_model_weights(backbone).DEFAULT.url
        advice = "pass --backbone-weights PATH, or use --backbone-weights none"
        state = hub_state_dict(url, f"ImageNet weights for {backbone}", advice)
    else:
        state = _backbone_keys(load_state_dict_file(spec), backbone)
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ConfigError(f"{spec} does not hold {backbone} weights: {exc}") from exc
    missing = [k for k in result.missing_keys if not k.startswith(("fc.", "classifier."))]
    if missing:
        raise ConfigError(
            f"{spec} does not hold {backbone} weights: {len(missing)} tensors missing, "
            f"e.g. {', '.join(missing[:3])}"
        )


def _backbone_keys(state: dict[str, Tensor], backbone: str) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("backbone.body."):
            key = key.removeprefix("backbone.body.")
            key = key if backbone.startswith("resnet") else f"features.{key}"
        out[key] = value
    return out


def load_coco_weights(model: nn.Module) -> None:
    """torchvision's COCO ``retinanet_resnet50_fpn``, all but its 91-class ``cls_logits``."""
    from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights

    url = RetinaNet_ResNet50_FPN_Weights.COCO_V1.url
    state = hub_state_dict(url, "COCO RetinaNet weights", "or drop --weights coco")
    # A plain dict has no version metadata, so torchvision's head converts v1 key names itself.
    state = {k: v for k, v in state.items() if ".cls_logits." not in k}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if ".cls_logits." not in k]
    missing = [k for k in missing if ".normalizer." not in k]
    if missing or result.unexpected_keys:
        raise ConfigError(f"COCO weights do not fit: {(missing + result.unexpected_keys)[:3]}")
