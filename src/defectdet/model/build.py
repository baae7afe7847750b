"""Building torchvision's RetinaNet from a ``ModelConfig``.

What differs from ``torchvision.models.detection.retinanet_resnet50_fpn``: any of the supported
backbones, a configurable FPN width, pyramid levels (P2..P7), head depth and anchors; the loss of
``losses.DefectRetinaNetHead``; and a transform that does not re-interpolate images the data
pipeline already resized.

The model takes a list of (3, H, W) float images in 0..1 (RGB, not normalised), or a (B, 3, H, W)
tensor, with the longest side equal to ``cfg.image_size`` (other sizes are resized, as torchvision
does, and detections mapped back). Targets: ``boxes`` (G, 4) float xyxy in input pixels and
``labels`` (G,) int64 in ``0..K-1`` (no background class). Train mode returns the losses
``classification`` and ``bbox_regression``; eval mode returns per image ``boxes``, ``scores``,
``labels``.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.transform import (
    GeneralizedRCNNTransform,
    _resize_image_and_masks,
    resize_boxes,
)
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from defectdet.config import LossConfig, ModelConfig
from defectdet.errors import ConfigError
from defectdet.model.anchors import default_anchor_sizes, make_anchor_generator
from defectdet.model.losses import DefectRetinaNetHead
from defectdet.model.weights import (
    load_backbone_weights,
    load_checkpoint,
    load_coco_weights,
    load_matching,
)

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
BACKBONES = (*RESNETS, "mobilenet_v3_large")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
SIZE_DIVISIBLE = 32


def build_model(
    cfg: ModelConfig, loss: LossConfig | None = None, *, load_weights: bool = True
) -> RetinaNet:
    """RetinaNet for ``cfg.num_classes`` defect classes (see the module docstring for I/O).

    Args:
        cfg: resolved model config (``num_classes`` and ``image_size`` set).
        loss: training loss settings; ``None`` = focal 0.25/2 with batch normalisation.
        load_weights: False builds the same structure (norm layers included) without loading
            or downloading anything, e.g. to load a checkpoint into it.

    ``cfg.weights`` ("coco" or a checkpoint PATH) supersedes ``cfg.backbone_weights``. After a
    PATH fine-tune, ``model.skipped_weights`` lists the head tensors that did not fit.
    """
    validate_model_config(cfg)
    # torchvision freezes BatchNorm statistics whenever the backbone starts from trained weights.
    pretrained = cfg.backbone_weights != "none" or bool(cfg.weights)
    backbone = _build_backbone(cfg, pretrained, load_weights and not cfg.weights)
    anchor_generator = make_anchor_generator(
        cfg.anchor_sizes or default_anchor_sizes(cfg.min_level, cfg.max_level), cfg.aspect_ratios
    )
    v2 = cfg.head == "v2"
    head = DefectRetinaNetHead(
        cfg.fpn_channels,
        anchor_generator.num_anchors_per_location()[0],
        cfg.num_classes,
        num_convs=cfg.head_convs,
        norm_layer=partial(nn.GroupNorm, math.gcd(32, cfg.fpn_channels)) if v2 else None,
        loss=loss,
        box_loss="giou" if v2 else "l1",
    )
    model = RetinaNet(
        backbone,
        cfg.num_classes,
        min_size=cfg.image_size,
        max_size=cfg.image_size,
        anchor_generator=anchor_generator,
        head=head,
        score_thresh=cfg.score_thresh,
        nms_thresh=cfg.nms_thresh,
        detections_per_img=cfg.detections_per_img,
    )
    model.transform = FitTransform(cfg.image_size)
    model.skipped_weights = []
    if cfg.weights == "coco":
        det_utils.overwrite_eps(model, 0.0)  # as torchvision: COCO_V1 frozen BN uses eps 0
        if load_weights:
            load_coco_weights(model)
    elif cfg.weights and load_weights:
        state = load_checkpoint(cfg.weights)["model"]
        model.skipped_weights = load_matching(model, state, cfg.weights)
        if model.skipped_weights:
            warnings.warn(
                f"{cfg.weights}: {len(model.skipped_weights)} head tensors did not fit and start "
                f"fresh: {'; '.join(model.skipped_weights[:4])}",
                stacklevel=2,
            )
    return model


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Move ``model`` to ``device``; with ``channels_last`` also its weights and input batches."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if isinstance(model.transform, FitTransform):
        model.transform.channels_last = channels_last  # batch is built in that layout: no copy
    return model


# ---------------------------------------------------------------------------- validation
def validate_model_config(cfg: ModelConfig) -> None:
    """Raise ConfigError for settings that cannot build a model."""
    if cfg.num_classes <= 0:
        raise ConfigError(
            f"model.num_classes must be > 0 (set from the data), got {cfg.num_classes}"
        )
    if cfg.backbone not in BACKBONES:
        raise ConfigError(f"backbone must be one of {'|'.join(BACKBONES)}, not {cfg.backbone!r}")
    if cfg.head not in ("v1", "v2"):
        raise ConfigError(f"head must be v1|v2, not {cfg.head!r}")
    if cfg.min_level not in (2, 3) or cfg.max_level not in (5, 6, 7):
        raise ConfigError(
            f"pyramid levels {cfg.min_level}..{cfg.max_level} are not supported: "
            "min_level must be 2 or 3, max_level 5, 6 or 7"
        )
    if cfg.image_size < 32 or cfg.image_size % SIZE_DIVISIBLE:
        low = max(32, cfg.image_size // 32 * 32)
        raise ConfigError(
            f"image_size must be a multiple of 32 and at least 32, got {cfg.image_size} "
            f"(try {low} or {low + 32})"
        )
    if cfg.fpn_channels <= 0 or cfg.head_convs < 0:
        raise ConfigError("fpn_channels must be > 0 and head_convs >= 0")
    if not cfg.aspect_ratios or min(cfg.aspect_ratios) <= 0:
        raise ConfigError(f"aspect_ratios must be positive, got {cfg.aspect_ratios}")
    _validate_anchors(cfg)
    if not (0 <= cfg.score_thresh <= 1 and 0 < cfg.nms_thresh <= 1 and cfg.detections_per_img > 0):
        raise ConfigError(
            "need 0 <= score_thresh <= 1, 0 < nms_thresh <= 1, detections_per_img > 0"
        )
    if cfg.class_names and len(cfg.class_names) != cfg.num_classes:
        raise ConfigError(f"{len(cfg.class_names)} class names for {cfg.num_classes} classes")
    if cfg.weights == "coco":
        _validate_coco(cfg)


def _validate_anchors(cfg: ModelConfig) -> None:
    levels = cfg.max_level - cfg.min_level + 1
    if cfg.anchors not in ("default", "auto"):
        raise ConfigError(f"anchors must be default|auto, not {cfg.anchors!r}")
    if cfg.anchor_sizes and (len(cfg.anchor_sizes) != levels or min(cfg.anchor_sizes) <= 0):
        raise ConfigError(
            f"anchor_sizes needs {levels} positive sizes (levels {cfg.min_level}..{cfg.max_level}),"
            f" got {cfg.anchor_sizes}"
        )


def _validate_coco(cfg: ModelConfig) -> None:
    """COCO weights exist for one architecture only: torchvision's retinanet_resnet50_fpn."""
    wrong = [
        f"{name}={got}"
        for name, got, want in (
            ("backbone", cfg.backbone, "resnet50"),
            ("head", cfg.head, "v1"),
            ("fpn_channels", cfg.fpn_channels, 256),
            ("head_convs", cfg.head_convs, 4),
            ("min_level", cfg.min_level, 3),
            ("max_level", cfg.max_level, 7),
            ("aspect ratios", len(cfg.aspect_ratios), 3),
        )
        if got != want
    ]
    if wrong:
        raise ConfigError(
            "--weights coco loads torchvision's retinanet_resnet50_fpn, which needs backbone "
            "resnet50, head v1, fpn_channels 256, head_convs 4, levels 3..7 and 3 aspect ratios; "
            f"this config has {', '.join(wrong)}. Use --backbone-weights imagenet instead."
        )


# ---------------------------------------------------------------------------- backbone
def _build_backbone(cfg: ModelConfig, pretrained: bool, load: bool) -> BackboneWithFPN:
    """Backbone body + FPN giving levels ``min_level..max_level`` of width ``fpn_channels``.

    torchvision's ``_resnet_fpn_extractor`` / ``_mobilenet_extractor`` hard-code 256 channels,
    so the FPN is assembled here (same layers, same freezing rule).
    """
    levels = range(cfg.min_level, min(cfg.max_level, 5) + 1)  # from the body; P6/P7 are extra
    trainable = _trainable_layers(cfg, pretrained)
    if cfg.backbone in RESNETS:
        norm = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
        net = getattr(torchvision.models, cfg.backbone)(weights=None, norm_layer=norm)
        if load:
            load_backbone_weights(net, cfg.backbone, cfg.backbone_weights)
        _freeze_resnet(net, trainable)
        stage2 = net.inplanes // 8  # layer k has stage2 * 2**(k-1) channels; level l = layer l-1
        returned = {f"layer{lvl - 1}": str(i) for i, lvl in enumerate(levels)}
        in_channels = [stage2 * 2 ** (lvl - 2) for lvl in levels]
        body = net
    else:  # mobilenet_v3_large; its own BatchNorm eps is 1e-3
        norm = partial(FrozenBatchNorm2d, eps=1e-3) if pretrained else None
        net = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=norm)
        if load:
            load_backbone_weights(net, cfg.backbone, cfg.backbone_weights)
        body = net.features
        starts = [i for i, b in enumerate(body) if getattr(b, "_is_cn", False)]
        ends = [i - 1 for i in starts] + [len(body) - 1]  # ends[k]: last block at stride 2**(k+1)
        stages = [0, *starts, len(body) - 1]
        freeze_before = len(body) if trainable == 0 else stages[len(stages) - trainable]
        for block in body[:freeze_before]:
            block.requires_grad_(False)
        returned = {str(ends[lvl - 1]): str(i) for i, lvl in enumerate(levels)}
        in_channels = [body[ends[lvl - 1]].out_channels for lvl in levels]
    return BackboneWithFPN(body, returned, in_channels, cfg.fpn_channels, _extra_levels(cfg))


def _trainable_layers(cfg: ModelConfig, pretrained: bool) -> int:
    most = 5 if cfg.backbone in RESNETS else 6
    if not pretrained:
        return most  # as torchvision: nothing is frozen when training from scratch
    if not 0 <= cfg.trainable_backbone_layers <= most:
        raise ConfigError(
            f"trainable_backbone_layers must be 0..{most} for {cfg.backbone}, "
            f"got {cfg.trainable_backbone_layers}"
        )
    return cfg.trainable_backbone_layers


def _freeze_resnet(net: nn.Module, trainable: int) -> None:
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        train.append("bn1")
    for name, param in net.named_parameters():
        if not name.startswith(tuple(train)):
            param.requires_grad_(False)


class _NoExtraLevels(ExtraFPNBlock):
    """max_level 5: the FPN's outputs as they are (BackboneWithFPN would add a max-pool P6)."""

    def forward(self, results, x, names):
        return results, names


class _LastLevelP6(ExtraFPNBlock):
    """max_level 6: P6 = 3x3/2 conv on P5 (torchvision's LastLevelP6P7 without P7)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        nn.init.kaiming_uniform_(self.p6.weight, a=1)
        nn.init.zeros_(self.p6.bias)

    def forward(self, results, x, names):
        return [*results, self.p6(results[-1])], [*names, "p6"]


def _extra_levels(cfg: ModelConfig) -> ExtraFPNBlock:
    if cfg.max_level == 7:
        return LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels)  # from P5, as torchvision v1
    if cfg.max_level == 6:
        return _LastLevelP6(cfg.fpn_channels)
    return _NoExtraLevels()


# ---------------------------------------------------------------------------- transform
class FitTransform(GeneralizedRCNNTransform):
    """Normalise and batch images; resize only those whose longest side is not ``image_size``.

    The data pipeline already resizes to ``image_size``; torchvision's transform would
    re-interpolate every image anyway (a wasted pass, and a slight blur). Normalisation writes
    straight into the padded batch (one pass, no per-image temporaries), in channels-last
    layout when ``channels_last`` is set. Boxes of resized images are scaled, and
    ``postprocess`` maps detections back to each input image's own size.
    """

    def __init__(self, image_size: int) -> None:
        super().__init__(image_size, image_size, IMAGENET_MEAN, IMAGENET_STD, SIZE_DIVISIBLE)
        self.image_size = image_size
        self.channels_last = False

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        """images: B tensors (3, H_i, W_i) in 0..1 -> ImageList (B, 3, H, W), padded to /32."""
        if torchvision._is_tracing() or torch.jit.is_scripting():
            return super().forward(images, targets)
        images = list(images)
        targets = [dict(t) for t in targets] if targets is not None else None  # caller's intact
        for i, image in enumerate(images):
            if image.dim() != 3 or not image.is_floating_point():
                raise ValueError(
                    f"expected float (C, H, W) images in 0..1, got {image.dtype} "
                    f"{tuple(image.shape)}"
                )
            h, w = image.shape[-2:]
            if max(h, w) != self.image_size:
                # Bilinear weights sum to 1, so resizing before normalising gives the same image.
                images[i] = _resize_image_and_masks(image, self.image_size, self.image_size)[0]
                if targets is not None:
                    targets[i]["boxes"] = resize_boxes(
                        targets[i]["boxes"], (h, w), images[i].shape[-2:]
                    )
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        return ImageList(self._normalized_batch(images, sizes), sizes), targets

    def _normalized_batch(self, images: list[Tensor], sizes: list[tuple[int, int]]) -> Tensor:
        d = self.size_divisible
        height = math.ceil(max(h for h, _ in sizes) / d) * d
        width = math.ceil(max(w for _, w in sizes) / d) * d
        first = images[0]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        batch = torch.empty(
            (len(images), first.shape[0], height, width),
            dtype=first.dtype,
            device=first.device,
            memory_format=fmt,
        )
        if any(s != (height, width) for s in sizes):
            batch.zero_()  # padding is 0 after normalisation, as torchvision
        mean = torch.as_tensor(self.image_mean, dtype=first.dtype, device=first.device)[
            :, None, None
        ]
        std = torch.as_tensor(self.image_std, dtype=first.dtype, device=first.device)[:, None, None]
        for i, (image, (h, w)) in enumerate(zip(images, sizes, strict=True)):
            out = batch[i, :, :h, :w]
            torch.sub(image, mean, out=out)
            out.div_(std)
        return batch

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Scale boxes back to each input's size; images that were not resized are left alone."""
        if self.training:
            return result
        for pred, size, original in zip(result, image_shapes, original_image_sizes, strict=True):
            if tuple(size) != tuple(original):
                pred["boxes"] = resize_boxes(pred["boxes"], size, original)
        return result
