"""RetinaNet's heads: torchvision's box and class branches at a configurable depth, whose loss
comes from a :class:`~defectdet.model.criterion.Criterion`, and an optional image-level
defect/ok head beside them. Assembled into a model by :mod:`defectdet.model.build`."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import misc

from defectdet.model.criterion import BoxLoss, Criterion


def _set_convs(branch: nn.Module, channels: int, num_convs: int, norm_layer) -> None:
    """Replace torchvision's fixed 4 head convs with ``num_convs`` (same init: N(0, 0.01), 0)."""
    if num_convs == len(branch.conv):
        return
    branch.conv = nn.Sequential(
        *(
            misc.Conv2dNormActivation(channels, channels, norm_layer=norm_layer)
            for _ in range(num_convs)
        )
    )
    for layer in branch.conv.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class DefectRetinaNetHead(RetinaNetHead):
    """``RetinaNetHead`` with a configurable depth whose losses come from a criterion.

    The branches stay torchvision's classes (state-dict keys unchanged, so torchvision's COCO
    weights load); ``compute_loss`` hands the whole batch to the criterion.

    Args:
        in_channels: FPN width.
        num_anchors: anchors per location.
        num_classes: K defect classes (no background).
        num_convs: conv layers per branch (torchvision: 4).
        norm_layer: e.g. ``partial(nn.GroupNorm, 32)`` for the v2 head; None = no norm.
        criterion: the training losses (None: inference only).
        box_loss: "l1" (torchvision v1), "smooth_l1" or "giou" (v2).
        image_head: add an :class:`ImageHead` (output ``image_logits`` (B,)).
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        norm_layer=None,
        criterion: Criterion | None = None,
        box_loss: BoxLoss = "l1",
        image_head: bool = False,
    ) -> None:
        super().__init__(in_channels, num_anchors, num_classes, norm_layer=norm_layer)
        self.image_head = ImageHead(in_channels) if image_head else None
        for branch in (self.classification_head, self.regression_head):
            _set_convs(branch, in_channels, num_convs, norm_layer)
        self.box_loss = box_loss
        self.regression_head._loss_type = box_loss
        if criterion is not None:
            criterion.check_classes(num_classes)
        self.criterion = criterion

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        """L feature maps (B, C, H_l, W_l) -> ``cls_logits`` (B, A, K), ``bbox_regression``
        (B, A, 4) and, with an image head, ``image_logits`` (B,)."""
        out = super().forward(x)
        if self.image_head is not None:
            out["image_logits"] = self.image_head(x)
        return out

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        """The criterion's named losses (see :class:`~defectdet.model.criterion.Criterion`)."""
        if self.criterion is None:
            raise RuntimeError("this model was built for inference (no criterion); cannot train")
        box_coder = self.regression_head.box_coder
        return self.criterion(
            targets, head_outputs, anchors, matched_idxs, box_coder, self.box_loss
        )


class ImageHead(nn.Module):
    """An image-level defect/ok logit from the FPN levels.

    Each level is average- and max-pooled (max keeps a defect of a few pixels visible in a large
    image), the levels are averaged, and a two-layer MLP gives one logit. Trained with binary
    cross-entropy on every image, good parts included: with focal loss a good part's anchors are
    all easy negatives and teach almost nothing; this term makes every image count.

    Args:
        channels: FPN width C.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, 1)
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        """L maps (B, C, H_l, W_l) -> (B,) logits."""
        pooled = [torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1) for f in features]
        return self.mlp(torch.stack(pooled).mean(dim=0).float()).squeeze(1)
