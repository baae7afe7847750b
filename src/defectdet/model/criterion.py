"""The training criterion of RetinaNet: named loss terms (``classification``,
``bbox_regression``), a registry of classification losses, and the batch normaliser.

A new classification loss is one function registered under its name
(:func:`register_loss`); ``--loss NAME`` then selects it, and the config accepts the name.

torchvision's ``RetinaNetClassificationHead`` hard-codes ``sigmoid_focal_loss(alpha=0.25,
gamma=2)`` and divides each image's loss by ``max(1, that image's foreground anchors)``: a
defect-free image then weighs as much as an image with one defect, and defect-free images (often
most of an inspection dataset) dominate the gradient with pure background. Here the summed losses
of the whole batch are divided by the batch's foreground anchor count (or an EMA of it, as
detectron2 does), so every anchor counts the same whichever image it is in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import generalized_box_iou_loss

from defectdet.config import LossConfig
from defectdet.errors import ConfigError

Normalizer = Literal["batch", "ema", "image"]
BoxLoss = Literal["l1", "smooth_l1", "giou"]


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma: float = 2.0,
    alpha: float = 0.25,
    class_weights: Tensor | None = None,
    reduction: str = "sum",
) -> Tensor:
    """Sigmoid focal loss ``-alpha_t (1 - p_t)**gamma log(p_t)`` (Lin et al. 2017), elementwise.

    Args:
        logits: (N, K) raw scores (any shape whose last dimension is the class).
        targets: same shape, 1 for the true class, 0 otherwise (soft values allowed).
        gamma: focusing exponent; 0 gives alpha-balanced binary cross-entropy, exactly.
        alpha: weight of positive terms (negatives get ``1 - alpha``); < 0 disables it.
        class_weights: (K,) multiplies column k: all class-k terms, positive and negative.
        reduction: "none" | "mean" | "sum".
    """
    # log p_t from BCE-with-logits: stable where log(sigmoid(x)) would underflow.
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma != 0:
        # 1 - p_t from sigmoid(+-x) directly: `1 - sigmoid(x)` rounds to exactly 0 for confident
        # predictions, and for 0 < gamma < 1 the gradient of 0**gamma is infinite (inf * 0 = NaN
        # in backward; torchvision's sigmoid_focal_loss has this flaw). The clamp covers the
        # remaining underflow: there the gradient is simply 0, as it should be.
        one_minus_pt = torch.sigmoid(-logits) * targets + torch.sigmoid(logits) * (1 - targets)
        loss = loss * one_minus_pt.clamp_min(torch.finfo(one_minus_pt.dtype).tiny) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if class_weights is not None:
        loss = loss * class_weights
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be none|mean|sum, not {reduction!r}")


class LossNormalizer(nn.Module):
    """Turns per-image foreground anchor counts into per-image loss weights.

    The loss is ``sum_i weight_i * loss_i`` where ``loss_i`` is image i's summed loss:

    * ``batch``: ``1 / max(1, total foreground anchors in the batch)``;
    * ``ema``: ``1 / EMA`` of that total (momentum 0.9, detectron2); the EMA lives in the
      ``ema`` buffer (saved with the model) and starts at the first batch's count, not
      detectron2's arbitrary 100; it is updated only in training mode;
    * ``image``: ``1 / (batch size * max(1, image's foreground))``, torchvision's rule.

    Under DistributedDataParallel (training mode) the batch total is the mean over ranks
    (an all-reduce every step on every rank), so that DDP's gradient averaging gives the global
    batch's sum over the global foreground count, and the EMA stays identical on every rank.
    """

    def __init__(self, mode: Normalizer = "batch", momentum: float = 0.9) -> None:
        super().__init__()
        if mode not in ("batch", "ema", "image"):
            raise ConfigError(f"loss normalizer must be batch|ema|image, not {mode!r}")
        self.mode = mode
        self.momentum = momentum
        self.register_buffer("ema", torch.zeros(()))  # 0 = no batch seen yet

    def forward(self, num_foreground: Tensor) -> Tensor:
        """(B,) integer foreground counts -> (B,) float32 weights (no host sync)."""
        n = num_foreground.to(torch.float32)
        if self.mode == "image":
            return 1.0 / (n.clamp(min=1) * n.numel())
        total = self._across_ranks(n.sum()).clamp(min=1)
        if self.mode == "ema":
            total = self._update_ema(total)
        return (1.0 / total).expand_as(n)

    def _across_ranks(self, total: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return total
        world = dist.get_world_size()
        if world > 1:
            dist.all_reduce(total)  # a fresh tensor from sum(): reducing in place is safe
            total = total / world
        return total

    @torch.no_grad()
    def _update_ema(self, total: Tensor) -> Tensor:
        started = self.ema > 0
        if self.training:
            m = self.momentum
            self.ema.copy_(torch.where(started, m * self.ema + (1 - m) * total, total))
            return self.ema
        return torch.where(started, self.ema, total)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, momentum={self.momentum}"


# ---------------------------------------------------------------------------- registry
ClassificationLoss = Callable[[Tensor, Tensor, LossConfig], Tensor]
"""``(logits, targets, cfg) -> elementwise loss``: logits and 0/1 targets (B, A, K), fp32."""

CLASSIFICATION_LOSSES: dict[str, ClassificationLoss] = {}


def register_loss(name: str) -> Callable[[ClassificationLoss], ClassificationLoss]:
    """Register a classification loss under ``name`` (the value of ``--loss``)."""

    def add(fn: ClassificationLoss) -> ClassificationLoss:
        CLASSIFICATION_LOSSES[name] = fn
        return fn

    return add


@register_loss("focal")
def _focal(logits: Tensor, targets: Tensor, cfg: LossConfig) -> Tensor:
    """FL(p_t) = -α_t (1 - p_t)^γ log(p_t) with ``--gamma`` and ``--alpha``."""
    return focal_loss(logits, targets, cfg.gamma, cfg.alpha, reduction="none")


@register_loss("ce")
def _cross_entropy(logits: Tensor, targets: Tensor, cfg: LossConfig) -> Tensor:
    """Plain sigmoid cross-entropy (the paper's baseline): no focusing, no α."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


# ---------------------------------------------------------------------------- criterion
class Criterion(nn.Module):
    """RetinaNet's losses for a batch, each divided by the batch's normaliser.

    Args:
        cfg: the loss options (``loss`` picks the classification loss from the registry).
        class_weights: (K,) multiplies every class-k term, positive and negative; None = 1.
        image_weight: weight of the ``image`` term (binary cross-entropy of the head's
            ``image_logits`` against "has a defect", averaged over the batch); used when the
            head gives image logits.

    Called by the head (:class:`~defectdet.model.head.DefectRetinaNetHead`) in training mode.
    """

    def __init__(
        self,
        cfg: LossConfig | None = None,
        class_weights: Sequence[float] | None = None,
        image_weight: float = 1.0,
    ):
        super().__init__()
        self.image_weight = float(image_weight)
        cfg = cfg or LossConfig()
        if cfg.loss not in CLASSIFICATION_LOSSES:
            raise ConfigError(
                f"--loss {cfg.loss!r} is not one of {', '.join(CLASSIFICATION_LOSSES)}"
            )
        self.cfg = cfg
        self.classification = CLASSIFICATION_LOSSES[cfg.loss]
        weights = None
        if class_weights is not None and len(class_weights):
            if any(not w >= 0 for w in class_weights):
                raise ConfigError(f"class weights must be >= 0, got {list(class_weights)}")
            weights = torch.tensor([float(w) for w in class_weights], dtype=torch.float32)
        # Derived from the data, so not saved: checkpoints stay loadable under other weights.
        self.register_buffer("class_weights", weights, persistent=False)
        self.normalizer = LossNormalizer(cfg.normalizer)

    def check_classes(self, num_classes: int) -> None:
        if self.class_weights is not None and len(self.class_weights) != num_classes:
            raise ConfigError(
                f"{len(self.class_weights)} class weights given for {num_classes} classes; "
                "give one per class"
            )

    def forward(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
        box_coder: det_utils.BoxCoder,
        box_loss: BoxLoss = "l1",
    ) -> dict[str, Tensor]:
        """Batch-normalised losses.

        Args:
            targets: per image ``boxes`` (G_i, 4) and ``labels`` (G_i,) in 0..K-1.
            head_outputs: ``cls_logits`` (B, A, K) and ``bbox_regression`` (B, A, 4); optional
                ``image_logits`` (B,).
            anchors: B tensors (A, 4).
            matched_idxs: B tensors (A,): matched box index, -1 background, -2 ignored.
            box_coder: encodes/decodes box regressions against anchors.
            box_loss: "l1" (torchvision v1), "smooth_l1" or "giou" (v2).

        Returns:
            ``classification`` and ``bbox_regression`` scalars (and ``image`` with image logits).
        """
        matched = torch.stack(matched_idxs)  # (B, A)
        foreground = matched >= 0
        weights = self.normalizer(foreground.sum(dim=1))  # (B,)
        img_idx, anchor_idx = foreground.nonzero(as_tuple=True)  # (F,) each
        # Index of each foreground anchor's box among all boxes of the batch.
        counts = torch.tensor([len(t["labels"]) for t in targets], device=matched.device)
        offsets = counts.cumsum(0) - counts
        box_idx = matched[img_idx, anchor_idx] + offsets[img_idx]
        labels = torch.cat([t["labels"] for t in targets])[box_idx]
        boxes = torch.cat([t["boxes"] for t in targets])[box_idx]
        cls = self._classification_loss(
            head_outputs["cls_logits"], matched, img_idx, anchor_idx, labels, weights
        )
        box = _box_loss(
            head_outputs["bbox_regression"][img_idx, anchor_idx].float(),
            torch.stack(anchors)[img_idx, anchor_idx],
            boxes,
            weights[img_idx],
            box_coder,
            box_loss,
        )
        losses = {"classification": cls, "bbox_regression": box}
        if "image_logits" in head_outputs:
            losses["image"] = self._image_loss(head_outputs["image_logits"], targets)
        return losses

    def _image_loss(self, image_logits: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        """(B,) logits vs 1 for images with a box, 0 for good parts; mean over the batch."""
        truth = torch.tensor(
            [float(len(t["labels"]) > 0) for t in targets], device=image_logits.device
        )
        loss = F.binary_cross_entropy_with_logits(image_logits.float(), truth)
        return self.image_weight * loss

    def _classification_loss(
        self,
        cls_logits: Tensor,
        matched: Tensor,
        img_idx: Tensor,
        anchor_idx: Tensor,
        labels: Tensor,
        weights: Tensor,
    ) -> Tensor:
        logits = cls_logits.float()  # loss in fp32 under autocast; no copy otherwise
        target = torch.zeros_like(logits)
        target[img_idx, anchor_idx, labels] = 1.0
        loss = self.classification(logits, target, self.cfg)
        if self.class_weights is not None:
            loss = loss * self.class_weights
        # Anchors between the IoU thresholds are ignored: masking beats gathering a copy.
        valid = matched != det_utils.Matcher.BETWEEN_THRESHOLDS
        per_image = (loss.sum(dim=2) * valid).sum(dim=1)  # (B,)
        return (per_image * weights).sum()


def _box_loss(
    regression: Tensor,
    anchors: Tensor,
    boxes: Tensor,
    weights: Tensor,
    coder: det_utils.BoxCoder,
    kind: BoxLoss,
) -> Tensor:
    """Foreground anchors: regression (F, 4), anchors (F, 4), boxes (F, 4), weights (F,)."""
    if kind == "giou":
        pred = coder.decode_single(regression, anchors)
        per_anchor = generalized_box_iou_loss(pred, boxes, reduction="none", eps=1e-7)
    else:
        target = coder.encode_single(boxes, anchors)
        if kind == "l1":
            per_anchor = F.l1_loss(regression, target, reduction="none").sum(dim=1)
        else:
            per_anchor = F.smooth_l1_loss(regression, target, reduction="none").sum(dim=1)
    return (per_anchor * weights).sum()
