"""Model building, transform, pretrained weights (offline), anchors, checkpoints and devices."""

from __future__ import annotations

import os
import random
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from defectdet.config import LossConfig, ModelConfig, TrainConfig, to_dict, validate
from defectdet.errors import CheckpointError, ConfigError
from defectdet.model import (
    Criterion,
    ModelSpec,
    PostprocessSettings,
    autocast_enabled,
    build_model,
    fit_anchor_sizes,
    fit_aspect_ratios,
    load_checkpoint,
    load_model,
    prepare_model,
    resolve_device,
    save_checkpoint,
)
from defectdet.model.anchors import anchor_shapes, best_shape_iou, default_anchor_sizes
from defectdet.model.pretrained import load_initial_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(num_classes: int = 3, **changes) -> ModelSpec:
    names = ["a", "b", "c"] if num_classes == 3 else [f"c{k}" for k in range(num_classes)]
    base = dict(class_names=names, fpn_channels=32, head_convs=2, image_size=64, max_level=5)
    return ModelSpec(**{**base, **changes})


def make(score_thresh: float = 0.05, detections_per_img: int = 100, **changes) -> nn.Module:
    """A tiny model with a criterion (it can train) and the given post-processing."""
    model = build_model(tiny(**changes), Criterion())
    model.configure(PostprocessSettings(score_thresh, 0.5, detections_per_img))
    return model


def batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 48, 64, generator=g)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return images, targets


# ---------------------------------------------------------------------------- building
def test_train_forward_returns_finite_losses() -> None:
    model = make().train()
    losses = model(*batch())
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


@torch.no_grad()
def test_eval_detections_inside_the_image() -> None:
    model = make(score_thresh=0.0, detections_per_img=20).eval()
    images, _ = batch()
    out = model(images)
    for image, det in zip(images, out, strict=True):
        h, w = image.shape[-2:]
        assert 0 < len(det["boxes"]) <= 20
        assert (det["boxes"][:, 0::2] >= 0).all() and (det["boxes"][:, 0::2] <= w).all()
        assert (det["boxes"][:, 1::2] >= 0).all() and (det["boxes"][:, 1::2] <= h).all()
        assert det["labels"].max() < 3 and ((det["scores"] >= 0) & (det["scores"] <= 1)).all()


def test_shapes_follow_the_config() -> None:
    model = build_model(tiny(num_classes=5, aspect_ratios=[0.5, 1.0, 2.0, 4.0], head_convs=1))
    anchors = 3 * 4
    assert model.head.classification_head.cls_logits.out_channels == anchors * 5
    assert model.head.regression_head.bbox_reg.out_channels == anchors * 4
    assert len(model.head.classification_head.conv) == 1
    assert model.backbone.out_channels == 32
    features = model.backbone(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in features.values()] == [8, 4, 2]  # P3..P5
    assert all(f.shape[1] == 32 for f in features.values())


@pytest.mark.parametrize(("levels", "sizes"), [((2, 5), [16, 8, 4, 2]), ((3, 7), [8, 4, 2, 1, 1])])
def test_pyramid_levels(levels: tuple[int, int], sizes: list[int]) -> None:
    model = build_model(tiny(min_level=levels[0], max_level=levels[1]))
    features = model.backbone(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in features.values()] == sizes
    assert len(model.anchor_generator.sizes) == len(sizes)


def test_v2_head_has_groupnorm_and_giou() -> None:
    model = make(head="v2").train()
    assert any(isinstance(m, nn.GroupNorm) for m in model.head.modules())
    assert model.head.regression_head._loss_type == "giou"
    assert torch.isfinite(model(*batch())["bbox_regression"])


@torch.no_grad()
def test_mobilenet_builds_and_runs() -> None:
    model = build_model(tiny(backbone="mobilenet_v3_large")).eval()
    assert [f.shape[-1] for f in model.backbone(torch.zeros(1, 3, 64, 64)).values()] == [8, 4, 2]
    assert len(model([torch.rand(3, 64, 64)])) == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_classes": 0}, "at least one class"),
        ({"min_level": 4}, "levels"),
        ({"max_level": 8}, "levels"),
        ({"image_size": 50}, "multiple of 32"),
        ({"image_size": 0}, "image_size"),
        ({"anchor_sizes": [8.0, 16.0]}, "anchor_sizes"),
        ({"backbone": "vgg16"}, "backbone"),
    ],
)
def test_invalid_specs(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(tiny(**changes))


def test_coco_weights_need_torchvisions_architecture() -> None:
    with pytest.raises(ConfigError, match="resnet50"):
        validate(TrainConfig(model=ModelConfig(weights="coco")))
    validate(TrainConfig(model=ModelConfig(weights="coco", backbone="resnet50")))


# ---------------------------------------------------------------------------- transform
def _count_bilinear(monkeypatch) -> list[int]:
    calls = [0]
    original = torch.nn.functional.interpolate

    def counting(*args, **kwargs):
        calls[0] += kwargs.get("mode") == "bilinear"
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", counting)
    return calls


@torch.no_grad()
def test_transform_skips_resize_at_image_size(monkeypatch) -> None:
    model = build_model(tiny()).eval()
    calls = _count_bilinear(monkeypatch)
    model([torch.rand(3, 64, 64), torch.rand(3, 40, 64)])
    assert calls[0] == 0
    model([torch.rand(3, 100, 80)])
    assert calls[0] == 1


@torch.no_grad()
def test_transform_normalises_like_torchvision() -> None:
    images = [torch.rand(3, 64, 64), torch.rand(3, 40, 64)]  # the second is padded
    ours = build_model(tiny()).transform.eval()
    theirs = GeneralizedRCNNTransform(64, 64, ours.image_mean, ours.image_std).eval()
    a, b = ours(images)[0], theirs(images)[0]
    assert a.image_sizes == b.image_sizes == [(64, 64), (40, 64)]
    torch.testing.assert_close(a.tensors, b.tensors)


@torch.no_grad()
def test_resized_image_maps_boxes_back_to_its_own_size() -> None:
    """A 2x nearest-upsampled non-square image is bilinearly halved back exactly: same detections,
    boxes twice as large."""
    model = make(score_thresh=0.0, detections_per_img=30).eval()
    small = torch.rand(3, 48, 64)
    large = small.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # (3, 96, 128)
    a, b = model([small])[0], model([large])[0]
    torch.testing.assert_close(b["scores"], a["scores"])
    torch.testing.assert_close(b["boxes"], a["boxes"] * 2)
    assert (b["boxes"][:, 2] <= 128).all() and (b["boxes"][:, 3] <= 96).all()


def test_training_targets_scaled_only_when_resized() -> None:
    transform = build_model(tiny()).transform.train()
    boxes = torch.tensor([[10.0, 10.0, 50.0, 30.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([0])}] * 2
    _, out = transform([torch.rand(3, 48, 64), torch.rand(3, 96, 128)], targets)
    assert torch.equal(out[0]["boxes"], boxes)
    torch.testing.assert_close(out[1]["boxes"], boxes / 2)
    assert targets[1]["boxes"] is boxes  # caller's targets untouched


@torch.no_grad()
def test_channels_last_gives_the_same_detections() -> None:
    torch.manual_seed(0)
    plain = make(score_thresh=0.0, detections_per_img=10).eval()
    fast = make(score_thresh=0.0, detections_per_img=10).eval()
    fast = prepare_model(fast, torch.device("cpu"), channels_last=True)
    fast.load_state_dict(plain.state_dict())
    image = torch.rand(3, 64, 64)
    assert fast.transform([image])[0].tensors.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast([image])[0]["scores"], plain([image])[0]["scores"])


# ---------------------------------------------------------------------------- pretrained weights
def _offline(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def test_offline_imagenet_message(monkeypatch) -> None:
    _offline(monkeypatch)
    with pytest.raises(ConfigError) as info:
        spec = tiny(init="pretrained")
        load_initial_weights(build_model(spec), spec, "", "imagenet")
    message = str(info.value)
    assert "cannot download" in message and "offline?" in message
    assert os.path.join(torch.hub.get_dir(), "checkpoints", "resnet18-") in message
    assert "--backbone-weights PATH" in message and "--backbone-weights none" in message


def test_coco_weights_load_all_but_the_class_layer(monkeypatch) -> None:
    spec = ModelSpec(["a", "b"], 64, backbone="resnet50", init="coco")
    torch.manual_seed(0)
    coco = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: coco.state_dict())
    model = build_model(spec)
    load_initial_weights(model, spec, "coco", "none")
    ours, theirs = model.state_dict(), coco.state_dict()
    assert torch.equal(
        ours["head.regression_head.bbox_reg.weight"], theirs["head.regression_head.bbox_reg.weight"]
    )
    assert torch.equal(
        ours["backbone.fpn.extra_blocks.p7.weight"], theirs["backbone.fpn.extra_blocks.p7.weight"]
    )
    assert ours["head.classification_head.cls_logits.weight"].shape[0] == 9 * 2
    _offline(monkeypatch)
    with pytest.raises(ConfigError, match="cannot download COCO"):
        load_initial_weights(build_model(spec), spec, "coco", "none")


def test_backbone_weights_from_a_file(tmp_path: Path) -> None:
    resnet = torchvision.models.resnet18()
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    spec = tiny(init="pretrained")
    model = build_model(spec)
    load_initial_weights(model, spec, "", str(tmp_path / "r18.pth"))
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    body = model.backbone.body
    assert torch.equal(body.bn1.running_mean, resnet.bn1.running_mean)  # frozen BN stats too
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="does not hold resnet18"):
        load_initial_weights(build_model(spec), spec, "", str(tmp_path / "bad.pth"))


def test_finetune_from_checkpoint_skips_the_class_layer(tmp_path: Path) -> None:
    source = build_model(tiny(num_classes=3))
    save_checkpoint(tmp_path / "a.pt", {"model": source.state_dict()})
    spec = tiny(num_classes=5)
    model = build_model(spec)
    with pytest.warns(UserWarning, match="did not fit"):
        skipped = load_initial_weights(model, spec, str(tmp_path / "a.pt"), "none")
    assert [s.split(":")[0] for s in skipped] == [
        "head.classification_head.cls_logits.bias",
        "head.classification_head.cls_logits.weight",
    ]
    key = "head.regression_head.bbox_reg.weight"
    assert torch.equal(model.state_dict()[key], source.state_dict()[key])
    other = build_model(tiny(backbone="resnet34"))
    save_checkpoint(tmp_path / "b.pt", {"model": other.state_dict()})
    with pytest.raises(ConfigError, match="another backbone"):
        load_initial_weights(build_model(tiny()), tiny(), str(tmp_path / "b.pt"), "none")


# ---------------------------------------------------------------------------- anchors
def test_fitted_anchors_beat_defaults_on_small_boxes() -> None:
    rng = np.random.default_rng(0)
    size = np.exp(rng.normal(np.log(10), 0.4, 2000))  # ~10 px defects
    ratio = np.exp(rng.normal(0, 0.6, 2000))  # h / w
    box_wh = np.stack([size / np.sqrt(ratio), size * np.sqrt(ratio)], axis=1)
    sizes, ratios = fit_anchor_sizes(box_wh, 3, 5), fit_aspect_ratios(box_wh)
    assert len(sizes) == 3 and sizes == sorted(sizes) and len(set(sizes)) == 3 and min(sizes) >= 4
    assert (
        len(ratios) == 3 and ratios == sorted(ratios) and 1 / 8 <= min(ratios) <= max(ratios) <= 8
    )
    fitted = np.median(best_shape_iou(box_wh, anchor_shapes(sizes, ratios)))
    default = np.median(
        best_shape_iou(box_wh, anchor_shapes(default_anchor_sizes(3, 5), [0.5, 1, 2]))
    )
    assert fitted > 0.7 > 0.3 > default
    model = build_model(tiny(anchor_sizes=sizes, aspect_ratios=ratios))
    assert model.anchor_generator.sizes[0][0] == pytest.approx(sizes[0])
    # No boxes to fit (setup leaves anchor_sizes empty): torchvision's defaults.
    assert build_model(tiny()).anchor_generator.sizes[0][0] == 32.0


def test_anchors_are_fitted_at_model_resolution() -> None:
    """--anchors auto with --image-size 64 on 256 px images (square, and portrait 128 x 256:
    the longer side counts) fits the boxes as the model sees them: 4x smaller."""
    import pandas as pd

    from defectdet.data.catalog import Catalog
    from defectdet.engine.train.setup import RunData, resolve

    n = 90
    width, height = np.array([256, 128] * 45), np.full(n, 256)
    rng = np.random.default_rng(0)
    wh = np.stack([rng.uniform(30, 120, n), rng.uniform(20, 120, n)], axis=1)
    images = pd.DataFrame(
        {
            "image_id": np.arange(n),
            "file_name": [f"{i}.png" for i in range(n)],
            "width": width,
            "height": height,
            "split": "train",
        }
    )
    boxes = pd.DataFrame(
        {
            "image_id": np.arange(n),
            "class_id": 0,
            "x1": 2.0,
            "y1": 2.0,
            "x2": 2.0 + wh[:, 0],
            "y2": 2.0 + wh[:, 1],
        }
    )
    catalog = Catalog(Path("."), ["pit"], images, boxes)
    cfg = TrainConfig()
    cfg.model.image_size, cfg.model.anchors, cfg.model.levels = 64, "auto", "3-5"
    spec = resolve(cfg, RunData(catalog, catalog, catalog)).spec
    at_64 = wh * (64 / np.maximum(width, height))[:, None]  # what the model sees
    assert spec.anchor_sizes == pytest.approx(fit_anchor_sizes(at_64, 3, 5), abs=0.01)
    assert spec.aspect_ratios == pytest.approx(fit_aspect_ratios(at_64), abs=0.001)
    native = fit_anchor_sizes(wh, 3, 5)  # fitted to the original pixels instead: 4x larger
    assert spec.anchor_sizes == pytest.approx([s / 4 for s in native], rel=0.01)
    assert build_model(spec).anchor_generator.sizes[0][0] == pytest.approx(spec.anchor_sizes[0])


def test_anchor_fit_edge_cases() -> None:
    assert fit_aspect_ratios(np.array([[10.0, 10.0]] * 5)) == pytest.approx([0.707, 1.0, 1.414])
    assert fit_aspect_ratios(np.array([[1.0, 100.0]] * 5))[-1] == 8.0
    assert min(fit_anchor_sizes(np.array([[1.0, 1.0]] * 5), 3, 7)) == 4.0
    with pytest.raises(ConfigError, match="no boxes"):
        fit_anchor_sizes(np.zeros((0, 2)), 3, 5)


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path: Path) -> None:
    spec = tiny()
    model = build_model(spec, Criterion(LossConfig(normalizer="ema")))
    model.configure(PostprocessSettings(score_thresh=0.0))
    model.train()(*batch())  # moves BatchNorm stats and the loss EMA
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sum(model(*batch()).values()).backward()
    optimizer.step()
    train_cfg = TrainConfig(loss=LossConfig(normalizer="ema"))
    payload = {
        "model": model.state_dict(),
        "config": to_dict(train_cfg),
        "model_spec": spec.to_dict(),
        "classes": spec.class_names,
        "epoch": 3,
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
    }
    save_checkpoint(tmp_path / "last.pt", payload)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert loaded["epoch"] == 3 and loaded["classes"] == ["a", "b", "c"]
    for key, value in payload["model"].items():
        assert torch.equal(loaded["model"][key], value), key
    assert loaded["model"]["head.criterion.normalizer.ema"] > 0
    assert loaded["rng"]["python"] == payload["rng"]["python"]

    rebuilt, rebuilt_spec = load_model(tmp_path / "last.pt", "cpu")
    assert rebuilt_spec == spec and not rebuilt.training and rebuilt.head.criterion is None
    rebuilt.configure(PostprocessSettings(score_thresh=0.0))
    image = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(image)[0]["scores"], model.eval()(image)[0]["scores"])


def test_save_refuses_what_load_would_refuse(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"payload\['rng'\]\['numpy'\] is a numpy.ndarray"):
        save_checkpoint(tmp_path / "x.pt", {"model": {}, "rng": {"numpy": np.zeros(3)}})
    assert not (tmp_path / "x.pt").exists()


class _Custom:
    pass


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_load_refuses_pickled_objects_without_running_them(tmp_path: Path) -> None:
    torch.save({"model": {}, "x": _Custom()}, tmp_path / "custom.pt")
    with pytest.raises(CheckpointError, match=r"carries pickled Python objects.*refusing"):
        load_checkpoint(tmp_path / "custom.pt")
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "x": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"\(posix.system|nt.system\).*could run code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"model": {"w": torch.ones(1000)}}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    torch.save({"weights": 1}, tmp_path / "other.pt")
    for name in ("text.pt", "empty.pt", "cut.pt", "other.pt"):
        with pytest.raises(CheckpointError, match="is not a readable defectdet checkpoint"):
            load_checkpoint(tmp_path / name)


def test_checkpoint_without_config(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a.pt", {"model": build_model(tiny()).state_dict()})
    with pytest.raises(CheckpointError, match="no saved model config"):
        load_model(tmp_path / "a.pt")
    bad = tiny(num_classes=4)
    payload = {"model": build_model(tiny()).state_dict(), "model_spec": bad.to_dict()}
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(payload)


# ---------------------------------------------------------------------------- device
def test_resolve_device_cpu_only(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device(spec)
    for spec in ("tpu", "cuda:x", "cuda:-1", ""):
        with pytest.raises(ConfigError, match="unknown device"):
            resolve_device(spec)


def test_resolve_device_gpu_index(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="2 GPU"):
        resolve_device("cuda:2")


def test_autocast_only_on_cuda() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert not autocast_enabled(None, cpu) and not autocast_enabled(True, cpu)
    assert autocast_enabled(None, gpu) and not autocast_enabled(False, gpu)


def test_unreadable_checkpoints_are_one_clear_line(tmp_path: Path, recwarn) -> None:
    (tmp_path / "notes.pt").write_text("epoch 3, looked good\n")
    with pytest.raises(CheckpointError, match="a text file, not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "notes.pt")
    import pickle

    with open(tmp_path / "plain.pkl.pt", "wb") as fh:  # a plain pickle, not torch.save
        pickle.dump({"model": _Custom()}, fh, protocol=4)
    with pytest.raises(CheckpointError, match="is not a readable defectdet checkpoint"):
        load_checkpoint(tmp_path / "plain.pkl.pt")
    assert not [w for w in recwarn if "pickle" in str(w.message).lower()]  # torch's note hidden
