"""Weights to start training from: ImageNet backbones and torchvision's COCO RetinaNet (through
torch hub's cache, so a pre-filled ``$TORCH_HOME`` works offline), local weight files, and a
defectdet checkpoint to fine-tune (head tensors that do not fit start fresh).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn

from defectdet.errors import ConfigError
from defectdet.model.checkpoint import load_checkpoint, load_state_dict_file
from defectdet.model.spec import ModelSpec


def load_initial_weights(
    model: nn.Module, spec: ModelSpec, weights: str, backbone_weights: str
) -> list[str]:
    """Load what training starts from into a freshly built ``model``.

    ``weights`` ("coco" or a checkpoint PATH) supersedes ``backbone_weights`` ("none",
    "imagenet" or PATH). Returns the head tensors of a PATH fine-tune that did not fit (they
    start fresh; a warning lists them).
    """
    if weights == "coco":
        load_coco_weights(model)
        return []
    if weights:
        state = load_checkpoint(weights)["model"]
        skipped = load_matching(model, state, weights)
        if skipped:
            warnings.warn(
                f"{weights}: {len(skipped)} head tensors did not fit and start "
                f"fresh: {'; '.join(skipped[:4])}",
                stacklevel=2,
            )
        return skipped
    load_backbone_weights(model.backbone.body, spec.backbone, backbone_weights)
    return []


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
            f"fit, e.g. {'; '.join(bad[:3])}; give the preset or model options it was trained "
            "with (its config.yaml; a checkpoint from before presets: --preset none)"
        )
    skipped += [f"{n}: missing from {source}" for n in missing if n.startswith("head.")]
    model.load_state_dict(keep, strict=False)
    return sorted(set(skipped))


def load_backbone_weights(body: nn.Module, backbone: str, spec: str) -> None:
    """Load ``spec`` ("none" | "imagenet" | PATH) into a built model's backbone body
    (``model.backbone.body``).

    "imagenet" is the backbone's ``DEFAULT`` weights through torch hub's cache (a pre-filled
    ``$TORCH_HOME`` works offline). A PATH may hold a classifier state dict, a DataParallel one,
    or a detection model's ``backbone.body.*`` tensors. The classifier's own layer is ignored.
    """
    if spec == "none":
        return
    if spec == "imagenet":
        url = torchvision.models.get_model_weights(backbone).DEFAULT.url
        advice = "pass --backbone-weights PATH, or use --backbone-weights none"
        state = hub_state_dict(url, f"ImageNet weights for {backbone}", advice)
    else:
        state = load_state_dict_file(spec)
    state = _body_keys(state)
    own = body.state_dict()
    try:
        body.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    except RuntimeError as exc:
        raise ConfigError(f"{spec} does not hold {backbone} weights: {exc}") from exc
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(
            f"{spec} does not hold {backbone} weights: {len(missing)} tensors missing, "
            f"e.g. {', '.join(missing[:3])}"
        )


def _body_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Classifier or detection-model key names -> the backbone body's (``layer1.0...`` for
    ResNets, ``3.block...`` for MobileNet's ``features``)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("backbone.body.").removeprefix("features.")
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
