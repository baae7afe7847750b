"""RetinaNet for defect detection: building, losses, anchors, checkpoints and devices."""

from defectdet.model.anchors import fit_anchor_sizes, fit_aspect_ratios
from defectdet.model.build import build_model, prepare_model
from defectdet.model.device import autocast_enabled, channels_last_enabled, resolve_device
from defectdet.model.losses import LossNormalizer, focal_loss
from defectdet.model.weights import load_checkpoint, model_from_checkpoint, save_checkpoint

__all__ = [
    "LossNormalizer",
    "autocast_enabled",
    "build_model",
    "channels_last_enabled",
    "fit_anchor_sizes",
    "fit_aspect_ratios",
    "focal_loss",
    "load_checkpoint",
    "model_from_checkpoint",
    "prepare_model",
    "resolve_device",
    "save_checkpoint",
]
