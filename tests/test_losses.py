"""Focal loss, class weights and batch loss normalisation (vs torchvision's per-image rule)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import box_iou, sigmoid_focal_loss

from defectdet.config import LossConfig, TrainConfig, validate
from defectdet.errors import ConfigError
from defectdet.model import ModelSpec, build_model
from defectdet.model.criterion import CLASSIFICATION_LOSSES, Criterion, LossNormalizer, focal_loss
from defectdet.model.head import DefectRetinaNetHead

pytestmark = pytest.mark.usefixtures("one_thread")


def _logits_targets(n: int = 64, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 4
    logits[0, 0], logits[1, 1] = 40.0, -40.0  # saturated: log(sigmoid) would underflow here
    targets = (torch.rand(n, k, generator=g) < 0.2).float()
    targets[0, 0], targets[1, 1] = 0.0, 1.0
    return logits, targets


@pytest.mark.parametrize(
    ("gamma", "alpha"), [(2.0, 0.25), (0.5, 0.5), (1.0, -1.0), (3.0, 0.9), (0.0, 0.25)]
)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_focal_matches_torchvision(gamma: float, alpha: float, reduction: str) -> None:
    logits, targets = _logits_targets()
    ours = focal_loss(logits, targets, gamma, alpha, reduction=reduction)
    ref = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    assert torch.isfinite(ours).all()


def test_gamma_zero_is_alpha_balanced_bce_exactly() -> None:
    logits, targets = _logits_targets()
    alpha = 0.3
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    alpha_t = torch.where(targets == 1, alpha, 1 - alpha)
    assert torch.equal(focal_loss(logits, targets, 0.0, alpha, reduction="none"), alpha_t * bce)
    assert torch.equal(focal_loss(logits, targets, 0.0, -1.0, reduction="none"), bce)


def test_alpha_weights_positives_alpha_and_negatives_one_minus_alpha() -> None:
    logits = torch.zeros(2, 1)  # p = 0.5: every term is log 2 before weighting
    targets = torch.tensor([[1.0], [0.0]])
    loss = focal_loss(logits, targets, gamma=0.0, alpha=0.2, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([[0.2], [0.8]]) * math.log(2))
    focal = focal_loss(logits, targets, gamma=2.0, alpha=0.2, reduction="none")
    torch.testing.assert_close(focal, torch.tensor([[0.2], [0.8]]) * math.log(2) * 0.25)


def test_negative_alpha_disables_balancing() -> None:
    logits, targets = _logits_targets()
    unweighted = focal_loss(logits, targets, gamma=2.0, alpha=-1.0, reduction="none")
    p = torch.sigmoid(logits)
    p_t = torch.where(targets == 1, p, 1 - p)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(unweighted, bce * (1 - p_t) ** 2)


def test_class_weights_multiply_exactly_their_column() -> None:
    logits, targets = _logits_targets(k=4)
    base = focal_loss(logits, targets, 2.0, 0.25, reduction="none")
    weights = torch.tensor([1.0, 1.0, 3.0, 0.5])
    weighted = focal_loss(logits, targets, 2.0, 0.25, class_weights=weights, reduction="none")
    for k in range(4):
        assert torch.equal(weighted[:, k], base[:, k] * weights[k])
    only_k = torch.tensor([0.0, 0.0, 2.5, 0.0])  # weight w on class 2, nothing elsewhere
    total = focal_loss(logits, targets, 2.0, 0.25, class_weights=only_k)
    torch.testing.assert_close(total, 2.5 * base[:, 2].sum())


def test_bad_reduction_and_loss_settings() -> None:
    logits, targets = _logits_targets()
    with pytest.raises(ValueError, match="reduction"):
        focal_loss(logits, targets, reduction="max")
    with pytest.raises(ConfigError, match="class weights"):
        DefectRetinaNetHead(8, 9, 3, num_convs=1, criterion=Criterion(LossConfig(), [1.0, 2.0]))
    with pytest.raises(ConfigError, match="gamma"):
        validate(TrainConfig(loss=LossConfig(gamma=-1.0)))
    with pytest.raises(ConfigError, match="--loss"):
        validate(TrainConfig(loss=LossConfig(loss="hinge")))


def test_ce_is_plain_bce_whatever_gamma_and_alpha() -> None:
    logits, targets = _logits_targets()
    cfg = LossConfig(loss="ce", gamma=2, alpha=0.25)
    ce = Criterion(cfg).classification(logits, targets, cfg)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(ce, bce)


def test_every_registered_loss_is_an_allowed_and_documented_option() -> None:
    from defectdet.config import options

    loss = options(TrainConfig)["loss"]
    assert set(loss.spec.choice_values()) == set(CLASSIFICATION_LOSSES) >= {"focal", "ce"}
    for name in CLASSIFICATION_LOSSES:
        assert name in loss.spec.help  # --help names every loss


# ---------------------------------------------------------------------------- normaliser
def test_normalizer_modes() -> None:
    counts = torch.tensor([6, 0, 2])
    torch.testing.assert_close(LossNormalizer("batch")(counts), torch.full((3,), 1 / 8))
    torch.testing.assert_close(
        LossNormalizer("image")(counts), torch.tensor([1 / 18, 1 / 3, 1 / 6])
    )
    assert LossNormalizer("batch")(torch.zeros(2, dtype=torch.long)).tolist() == [1.0, 1.0]
    with pytest.raises(ConfigError):
        LossNormalizer("median")  # type: ignore[arg-type]


def test_ema_normalizer_state_is_a_saved_buffer() -> None:
    norm = LossNormalizer("ema")
    assert "ema" in norm.state_dict()
    torch.testing.assert_close(norm(torch.tensor([4, 6])), torch.full((2,), 1 / 10))  # starts at 10
    torch.testing.assert_close(norm(torch.tensor([20, 0])), torch.full((2,), 1 / 11))  # .9*10+.1*20
    assert norm.state_dict()["ema"].item() == pytest.approx(11.0)
    norm.eval()  # no update outside training
    norm(torch.tensor([1000]))
    assert norm.ema.item() == pytest.approx(11.0)
    restored = LossNormalizer("ema")
    restored.load_state_dict(norm.state_dict())
    assert restored.ema.item() == pytest.approx(11.0)


def test_batch_total_is_averaged_over_ddp_ranks(monkeypatch) -> None:
    import torch.distributed as dist

    def all_reduce(tensor):  # another rank with 10 foreground anchors
        tensor.add_(10)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    counts = torch.tensor([4, 2])
    # (6 + 10) / 2 ranks = 8 per rank; DDP's gradient mean then gives sum / 16 overall.
    torch.testing.assert_close(LossNormalizer("batch")(counts), torch.full((2,), 1 / 8))
    torch.testing.assert_close(LossNormalizer("image")(counts), torch.tensor([1 / 8, 1 / 4]))
    assert LossNormalizer("batch").eval()(counts)[0].item() == pytest.approx(1 / 6)  # no all-reduce


# ---------------------------------------------------------------------------- in the model
def _tiny(loss: LossConfig, head: str = "v1", class_weights=None) -> torch.nn.Module:
    spec = ModelSpec(["a", "b", "c"], 64, fpn_channels=32, head_convs=1, max_level=5, head=head)
    torch.manual_seed(0)
    return build_model(spec, Criterion(loss, class_weights)).train()


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Image 0 has two defects; image 1 is defect-free."""
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 64, generator=g)]
    targets = [
        {
            "boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0], [30.0, 20.0, 62.0, 60.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return images, targets


def _head_inputs(model, images, targets):
    """What RetinaNet.forward hands to ``head.compute_loss``."""
    image_list, targets = model.transform(images, targets)
    features = list(model.backbone(image_list.tensors).values())
    outputs = model.head(features)
    anchors = model.anchor_generator(image_list, features)
    matched = []
    for a, t in zip(anchors, targets, strict=True):
        if len(t["boxes"]) == 0:
            matched.append(torch.full((len(a),), -1, dtype=torch.long))
        else:
            matched.append(model.proposal_matcher(box_iou(t["boxes"], a)))
    return targets, outputs, anchors, matched


def _per_image_cls_sums(targets, outputs, matched) -> list[torch.Tensor]:
    """Hand computation: each image's summed focal loss over non-ignored anchors."""
    sums = []
    for t, logits, m in zip(targets, outputs["cls_logits"], matched, strict=True):
        gt = torch.zeros_like(logits)
        fg = m >= 0
        gt[fg, t["labels"][m[fg]]] = 1.0
        valid = m != -2
        sums.append(sigmoid_focal_loss(logits[valid], gt[valid], reduction="sum"))
    return sums


@torch.no_grad()
def test_batch_normaliser_does_not_count_a_background_image_as_one_object() -> None:
    model = _tiny(LossConfig(normalizer="batch"))
    targets, outputs, anchors, matched = _head_inputs(model, *_batch())
    n_fg = [int((m >= 0).sum()) for m in matched]
    assert n_fg[0] > 2 and n_fg[1] == 0
    s_defect, s_background = _per_image_cls_sums(targets, outputs, matched)

    torchvision_loss = RetinaNetHead.compute_loss(model.head, targets, outputs, anchors, matched)
    ours = model.head.compute_loss(targets, outputs, anchors, matched)
    # torchvision: the defect-free image is divided by max(1, 0) = 1, as if it had one object.
    tv_expected = (s_defect / n_fg[0] + s_background / 1) / 2
    torch.testing.assert_close(torchvision_loss["classification"], tv_expected)
    # ours: the whole batch's loss over the batch's foreground count.
    ours_expected = (s_defect + s_background) / sum(n_fg)
    torch.testing.assert_close(ours["classification"], ours_expected)
    # The background image's weight: 1/2 there, 1/n_fg here.
    assert 1 / sum(n_fg) < 1 / 2
    # Same losses, same images: only the weighting differs.
    assert not torch.isclose(ours["classification"], torchvision_loss["classification"])


@torch.no_grad()
@pytest.mark.parametrize("head", ["v1", "v2"])
def test_image_normaliser_reproduces_torchvision(head: str) -> None:
    model = _tiny(LossConfig(normalizer="image"), head=head)
    inputs = _head_inputs(model, *_batch())
    ours = model.head.compute_loss(*inputs)
    theirs = RetinaNetHead.compute_loss(model.head, *inputs)
    for key in ("classification", "bbox_regression"):
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_batch_box_loss_is_sum_over_foreground() -> None:
    model = _tiny(LossConfig(normalizer="batch"))
    targets, outputs, anchors, matched = _head_inputs(model, *_batch())
    ours = model.head.compute_loss(targets, outputs, anchors, matched)
    # Only image 0 has foreground, so torchvision's per-image box loss (over 1 image's count,
    # then / batch size 2) is ours times 1/2.
    theirs = RetinaNetHead.compute_loss(model.head, targets, outputs, anchors, matched)
    torch.testing.assert_close(ours["bbox_regression"] / 2, theirs["bbox_regression"])


@torch.no_grad()
def test_class_weights_and_ce_in_the_head() -> None:
    weights = [1.0, 0.0, 4.0]
    model = _tiny(LossConfig(loss="ce"), class_weights=weights)
    targets, outputs, anchors, matched = _head_inputs(model, *_batch())
    ours = model.head.compute_loss(targets, outputs, anchors, matched)["classification"]
    expected = 0.0
    for t, logits, m in zip(targets, outputs["cls_logits"], matched, strict=True):
        gt = torch.zeros_like(logits)
        fg = m >= 0
        gt[fg, t["labels"][m[fg]]] = 1.0
        valid = m != -2
        bce = F.binary_cross_entropy_with_logits(logits[valid], gt[valid], reduction="none")
        expected = expected + (bce * torch.tensor(weights)).sum()
    n_fg = sum(int((m >= 0).sum()) for m in matched)
    torch.testing.assert_close(ours, expected / n_fg)


def test_training_forward_uses_the_normaliser_and_backprops() -> None:
    model = _tiny(LossConfig(normalizer="ema"))
    losses = model(*_batch())
    assert set(losses) == {"classification", "bbox_regression"}
    sum(losses.values()).backward()
    assert model.head.criterion.normalizer.ema.item() > 0
    assert model.head.classification_head.cls_logits.weight.grad is not None


@pytest.mark.parametrize("gamma", [0.25, 0.5, 1.0, 2.0])
def test_confident_predictions_give_finite_gradients(gamma: float):
    """For 0 < gamma < 1, (1 - p_t)**gamma has an infinite slope at 0; a naive 1 - sigmoid(x)
    hits exactly 0 for confident logits and turns the gradient into NaN."""
    logits = torch.tensor([[30.0, -30.0, 120.0, -120.0, 0.5]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]])
    focal_loss(logits, targets, gamma=gamma, alpha=0.25).backward()
    assert torch.isfinite(logits.grad).all(), logits.grad
    assert logits.grad[0, 4] < 0  # the uncertain positive is still pushed up
