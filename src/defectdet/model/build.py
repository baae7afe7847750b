"""The RetinaNet architecture, assembled from parts: backbone + FPN, anchors, head, transform.

What differs from ``torchvision.models.detection.retinanet_resnet50_fpn``: any of the supported
backbones, a configurable FPN width, pyramid levels (P2..P7), head depth and anchors; the loss
of a :class:`~defectdet.model.criterion.Criterion` passed in; decoding shared with the ONNX
backend (:mod:`defectdet.model.postprocess`); and a transform that does not re-interpolate
images the data pipeline already resized. Building loads no weights (see
:mod:`defectdet.model.pretrained` and :mod:`defectdet.model.restore`).

The model takes a list of (3, H, W) float images in 0..1 (RGB, not normalised), or a (B, 3, H, W)
tensor, with the longest side equal to ``spec.image_size`` (other sizes are resized, as
torchvision does, and detections mapped back). Targets: ``boxes`` (G, 4) float xyxy in input
pixels and ``labels`` (G,) int64 in ``0..K-1`` (no background class). Train mode returns the
losses ``classification`` and ``bbox_regression`` (and ``image`` with an image head); eval mode
returns per image ``boxes``, ``scores``, ``labels`` (and ``image_score``, the image head's
defect probability, a 0-d tensor).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from defectdet.errors import ConfigError
from defectdet.model.anchors import default_anchor_sizes, make_anchor_generator
from defectdet.model.criterion import Criterion
from defectdet.model.head import DefectRetinaNetHead
from defectdet.model.postprocess import PostprocessSettings, decode_detections
from defectdet.model.spec import INITS, SIZE_DIVISIBLE, ModelSpec

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
BACKBONES = (*RESNETS, "mobilenet_v3_large")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def build_model(
    spec: ModelSpec, criterion: Criterion | None = None, *, trainable_layers: int = 3
) -> DefectRetinaNet:
    """RetinaNet for ``spec`` (see the module docstring for I/O); no weights are loaded.

    Args:
        spec: architecture and resolved values.
        criterion: the training losses; None builds a model for inference only.
        trainable_layers: backbone stages trained when ``spec.init`` is pretrained (from
            scratch everything trains, as in torchvision).
    """
    validate_spec(spec)
    backbone = _build_backbone(spec, trainable_layers)
    anchor_generator = make_anchor_generator(
        spec.anchor_sizes or default_anchor_sizes(spec.min_level, spec.max_level),
        spec.aspect_ratios,
    )
    v2 = spec.head == "v2"
    head = DefectRetinaNetHead(
        spec.fpn_channels,
        anchor_generator.num_anchors_per_location()[0],
        spec.num_classes,
        num_convs=spec.head_convs,
        norm_layer=partial(nn.GroupNorm, math.gcd(32, spec.fpn_channels)) if v2 else None,
        criterion=criterion,
        box_loss="giou" if v2 else "l1",
        image_head=spec.image_head,
    )
    model = DefectRetinaNet(
        backbone,
        spec.num_classes,
        min_size=spec.image_size,
        max_size=spec.image_size,
        anchor_generator=anchor_generator,
        head=head,
    )
    model.transform = FitTransform(spec.image_size)
    model.configure(PostprocessSettings())
    if spec.init == "coco":
        det_utils.overwrite_eps(model, 0.0)  # as torchvision: COCO_V1 frozen BN uses eps 0
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
def validate_spec(spec: ModelSpec) -> None:
    """Raise ConfigError for a spec that cannot build a model."""
    if spec.num_classes <= 0:
        raise ConfigError("the model needs at least one class (none found in the data)")
    if spec.backbone not in BACKBONES:
        raise ConfigError(f"backbone must be one of {'|'.join(BACKBONES)}, not {spec.backbone!r}")
    if spec.head not in ("v1", "v2") or spec.init not in INITS:
        raise ConfigError(f"unknown head {spec.head!r} or init {spec.init!r}")
    if spec.min_level not in (2, 3) or spec.max_level not in (5, 6, 7):
        raise ConfigError(
            f"pyramid levels {spec.min_level}..{spec.max_level} are not supported: "
            "min_level must be 2 or 3, max_level 5, 6 or 7"
        )
    if spec.image_size < 32 or spec.image_size % SIZE_DIVISIBLE:
        low = max(32, spec.image_size // 32 * 32)
        raise ConfigError(
            f"image_size must be a multiple of 32 and at least 32, got {spec.image_size} "
            f"(try {low} or {low + 32})"
        )
    if spec.fpn_channels <= 0 or spec.head_convs < 0:
        raise ConfigError("fpn_channels must be > 0 and head_convs >= 0")
    if not spec.aspect_ratios or min(spec.aspect_ratios) <= 0:
        raise ConfigError(f"aspect_ratios must be positive, got {spec.aspect_ratios}")
    levels = spec.max_level - spec.min_level + 1
    if spec.anchor_sizes and (len(spec.anchor_sizes) != levels or min(spec.anchor_sizes) <= 0):
        raise ConfigError(
            f"anchor_sizes needs {levels} positive sizes (levels "
            f"{spec.min_level}..{spec.max_level}), got {spec.anchor_sizes}"
        )


# ---------------------------------------------------------------------------- backbone
def _build_backbone(spec: ModelSpec, trainable_layers: int) -> BackboneWithFPN:
    """Backbone body + FPN giving levels ``min_level..max_level`` of width ``fpn_channels``.

    torchvision's ``_resnet_fpn_extractor`` / ``_mobilenet_extractor`` hard-code 256 channels,
    so the FPN is assembled here (same layers, same freezing rule). Pretrained specs get frozen
    BatchNorm, as in torchvision.
    """
    levels = range(spec.min_level, min(spec.max_level, 5) + 1)  # from the body; P6/P7 are extra
    trainable = _trainable_layers(spec, trainable_layers)
    if spec.backbone in RESNETS:
        norm = FrozenBatchNorm2d if spec.pretrained else nn.BatchNorm2d
        net = getattr(torchvision.models, spec.backbone)(weights=None, norm_layer=norm)
        _freeze_resnet(net, trainable)
        stage2 = net.inplanes // 8  # layer k has stage2 * 2**(k-1) channels; level l = layer l-1
        returned = {f"layer{lvl - 1}": str(i) for i, lvl in enumerate(levels)}
        in_channels = [stage2 * 2 ** (lvl - 2) for lvl in levels]
        body = net
    else:  # mobilenet_v3_large; its own BatchNorm eps is 1e-3
        norm = partial(FrozenBatchNorm2d, eps=1e-3) if spec.pretrained else None
        body = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=norm).features
        starts = [i for i, b in enumerate(body) if getattr(b, "_is_cn", False)]
        ends = [i - 1 for i in starts] + [len(body) - 1]  # ends[k]: last block at stride 2**(k+1)
        stages = [0, *starts, len(body) - 1]
        freeze_before = len(body) if trainable == 0 else stages[len(stages) - trainable]
        for block in body[:freeze_before]:
            block.requires_grad_(False)
        returned = {str(ends[lvl - 1]): str(i) for i, lvl in enumerate(levels)}
        in_channels = [body[ends[lvl - 1]].out_channels for lvl in levels]
    return BackboneWithFPN(body, returned, in_channels, spec.fpn_channels, _extra_levels(spec))


def _trainable_layers(spec: ModelSpec, requested: int) -> int:
    most = 5 if spec.backbone in RESNETS else 6
    if not spec.pretrained:
        return most  # as torchvision: nothing is frozen when training from scratch
    if not 0 <= requested <= most:
        raise ConfigError(
            f"--trainable-backbone-layers must be 0..{most} for {spec.backbone}, got {requested}"
        )
    return requested


def _freeze_resnet(net: nn.Module, trainable: int) -> None:
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        train.append("bn1")
    for name, param in net.named_parameters():
        if not name.startswith(tuple(train)):
            param.requires_grad_(False)


class NoExtraLevels(ExtraFPNBlock):
    """max_level 5: the FPN's outputs as they are (BackboneWithFPN would add a max-pool P6)."""

    def forward(
        self, results: list[Tensor], x: list[Tensor], names: list[str]
    ) -> tuple[list[Tensor], list[str]]:
        return results, names


class LastLevelP6(ExtraFPNBlock):
    """max_level 6: P6 = 3x3/2 conv on P5 (torchvision's LastLevelP6P7 without P7)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        nn.init.kaiming_uniform_(self.p6.weight, a=1)
        nn.init.zeros_(self.p6.bias)

    def forward(
        self, results: list[Tensor], x: list[Tensor], names: list[str]
    ) -> tuple[list[Tensor], list[str]]:
        results = results + [self.p6(results[-1])]  # noqa: RUF005 (TorchScript: no unpacking)
        return results, names + ["p6"]  # noqa: RUF005


def _extra_levels(spec: ModelSpec) -> ExtraFPNBlock:
    if spec.max_level == 7:
        return LastLevelP6P7(spec.fpn_channels, spec.fpn_channels)  # from P5, as torchvision v1
    if spec.max_level == 6:
        return LastLevelP6(spec.fpn_channels)
    return NoExtraLevels()


# ---------------------------------------------------------------------------- transform
class FitTransform(GeneralizedRCNNTransform):
    """Normalise and batch images; resize only those whose longest side is not ``image_size``
    (with ``multi_scale`` set, training batches are used at the size they come).

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
        self.multi_scale = False  # set by multi-scale training

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
            keep = self.training and self.multi_scale  # rescaled on purpose
            if max(h, w) != self.image_size and not keep:
                # Bilinear weights sum to 1, so resizing before normalising gives the same image.
                images[i] = self.resize(image)[0]
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


class DefectRetinaNet(RetinaNet):
    """torchvision's RetinaNet whose decoding is :func:`decode_detections` (shared with the
    ONNX backend), whose post-processing is set with :meth:`configure`, and which carries the
    head's image-level score (when it has one) into each image's detections."""

    def forward(
        self, images: list[Tensor] | Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """torchvision's forward without the per-call target checks (the data layer checks
        boxes once); see the module docstring for I/O."""
        if torch.jit.is_scripting() or torchvision._is_tracing():
            return super().forward(images, targets)
        if self.training and targets is None:
            raise ValueError("targets are needed in training mode")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, targets = self.transform(images, targets)
        features = list(self.backbone(batch.tensors).values())
        head_outputs = self.head(features)
        anchors = self.anchor_generator(batch, features)
        if self.training:
            return self.compute_loss(targets, head_outputs, anchors)
        image_logits = head_outputs.pop("image_logits", None)
        per_level = [f.size(2) * f.size(3) for f in features]
        a = head_outputs["cls_logits"].size(1) // sum(per_level)
        per_level = [hw * a for hw in per_level]
        split = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(x.split(per_level)) for x in anchors]
        detections = self.postprocess_detections(split, split_anchors, batch.image_sizes)
        detections = self.transform.postprocess(detections, batch.image_sizes, original_sizes)
        if image_logits is not None:
            for det, logit in zip(detections, image_logits.float().sigmoid(), strict=True):
                det["image_score"] = logit
        return detections

    def configure(self, settings: PostprocessSettings) -> None:
        self.settings = settings
        self.score_thresh = settings.score_thresh
        self.nms_thresh = settings.nms_thresh
        self.detections_per_img = settings.detections_per_img
        self.topk_candidates = settings.topk_candidates

    def postprocess_detections(
        self,
        head_outputs: dict[str, list[Tensor]],
        anchors: list[list[Tensor]],
        image_shapes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        return decode_detections(
            head_outputs["cls_logits"],
            head_outputs["bbox_regression"],
            anchors[0],
            image_shapes,
            self.box_coder,
            self.settings,
        )
