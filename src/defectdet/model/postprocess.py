"""From raw head outputs to detections: RetinaNet's decoding, shared by the PyTorch model and
the ONNX backend (whose graph stops at the raw outputs), so both give the same boxes.

The algorithm is torchvision's ``RetinaNet.postprocess_detections``: per level, sigmoid scores
above ``score_thresh``, the best ``topk_candidates``, boxes decoded against their anchors and
clipped to the image; then class-wise NMS at ``nms_thresh`` and the best ``detections_per_img``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops

AP_SCORE_FLOOR = 0.05
"""Detections kept below any verdict threshold: average precision needs the low-scoring ones."""


@dataclass
class PostprocessSettings:
    """What decoding keeps: score threshold, NMS IoU, detections per image, candidates per
    level."""

    score_thresh: float = AP_SCORE_FLOOR
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    topk_candidates: int = 1000


def decode_detections(
    cls_logits: list[Tensor],
    bbox_regression: list[Tensor],
    anchors: list[Tensor],
    image_shapes: list[tuple[int, int]],
    box_coder: det_utils.BoxCoder,
    settings: PostprocessSettings,
) -> list[dict[str, Tensor]]:
    """Per-image detections from per-level outputs.

    Args:
        cls_logits: L tensors (B, A_l, K), one per pyramid level.
        bbox_regression: L tensors (B, A_l, 4).
        anchors: L tensors (A_l, 4) in input pixels (the same for every image of the batch).
        image_shapes: B (h, w) the boxes are clipped to.

    Returns:
        B dicts: ``boxes`` (N, 4) xyxy in input pixels, ``scores`` (N,), ``labels`` (N,) 0-based.
    """
    detections = []
    for index, shape in enumerate(image_shapes):
        boxes, scores, labels = [], [], []
        for logits, regression, level_anchors in zip(
            cls_logits, bbox_regression, anchors, strict=True
        ):
            num_classes = logits.shape[-1]
            level_scores = torch.sigmoid(logits[index]).flatten()
            candidates = torch.where(level_scores > settings.score_thresh)[0]
            level_scores = level_scores[candidates]
            k = det_utils._topk_min(candidates, settings.topk_candidates, 0)
            level_scores, order = level_scores.topk(k)
            candidates = candidates[order]
            anchor_idx = torch.div(candidates, num_classes, rounding_mode="floor")
            decoded = box_coder.decode_single(
                regression[index][anchor_idx], level_anchors[anchor_idx]
            )
            boxes.append(box_ops.clip_boxes_to_image(decoded, shape))
            scores.append(level_scores)
            labels.append(candidates % num_classes)
        b, s, lab = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = box_ops.batched_nms(b, s, lab, settings.nms_thresh)[: settings.detections_per_img]
        detections.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
    return detections
