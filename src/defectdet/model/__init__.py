"""RetinaNet for defect detection, by job: the spec of a model (:mod:`.spec`), its
architecture (:mod:`.build`), training criterion (:mod:`.criterion`), decoding
(:mod:`.postprocess`), anchors, checkpoint files (:mod:`.checkpoint`), weights to start from
(:mod:`.pretrained`), restoring for inference (:mod:`.restore`) and devices."""

from defectdet.model.anchors import fit_anchor_sizes, fit_aspect_ratios
from defectdet.model.build import build_model, prepare_model
from defectdet.model.checkpoint import load_checkpoint, save_checkpoint
from defectdet.model.criterion import CLASSIFICATION_LOSSES, Criterion, LossNormalizer, focal_loss
from defectdet.model.device import autocast_enabled, channels_last_enabled, resolve_device
from defectdet.model.postprocess import PostprocessSettings
from defectdet.model.restore import load_model
from defectdet.model.spec import ModelSpec

__all__ = [
    "CLASSIFICATION_LOSSES",
    "Criterion",
    "LossNormalizer",
    "ModelSpec",
    "PostprocessSettings",
    "autocast_enabled",
    "build_model",
    "channels_last_enabled",
    "fit_anchor_sizes",
    "fit_aspect_ratios",
    "focal_loss",
    "load_checkpoint",
    "load_model",
    "prepare_model",
    "resolve_device",
    "save_checkpoint",
]
