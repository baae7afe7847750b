"""``defectdet export``: a checkpoint as ONNX (for onnxruntime) or TorchScript.

ONNX: the *network* only. torchvision's RetinaNet post-processing loops over the images of a
batch in Python, so exporting the whole detector bakes the batch size in (the tracer unrolls
the loop) and data-dependent shapes (top-k, NMS) are awkward in ONNX. The graph therefore maps
``images`` float32 (B, 3, S, S) in 0..1 (normalised inside the graph; B dynamic, S fixed) to
``cls_logits`` (B, A, K) and ``bbox_regression`` (B, A, 4), with ``anchors`` (A, 4) as a
constant third output; decoding, thresholds and class-wise NMS run outside it with
torchvision's own code (:func:`defectdet.engine.backends.decode_detections`). Class names,
image size, anchors per level and the post-processing defaults are stored in
``metadata_props``.

TorchScript: the complete detector (pre-processing, post-processing, any input size) via
``torch.jit.script`` on a copy whose defectdet-specific parts are swapped for scriptable
torchvision equivalents with the same weights: the input transform (``FitTransform`` ->
``GeneralizedRCNNTransform`` with the same size and normalisation), the FPN's extra-level block,
and the head (``DefectRetinaNetHead`` -> ``RetinaNetHead``: its loss is not needed to infer).
In scripting, RetinaNet returns ``(losses, detections)``; class names and image size are in the
archive's ``extra/defectdet.json``.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from defectdet import __version__
from defectdet.engine.backends import ONNX_FORMAT
from defectdet.errors import ConfigError, OutputExistsError
from defectdet.io import atomic_open
from defectdet.model.build import IMAGENET_MEAN, IMAGENET_STD, _LastLevelP6, _NoExtraLevels

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
MIN_OPSET = 17


def default_output(weights: Path, fmt: str) -> Path:
    """``runs/.../best.pt`` -> ``runs/.../best.onnx`` or ``best.torchscript.pt``."""
    return weights.with_name(weights.stem + FORMATS[fmt])


def export(
    weights: Path,
    fmt: str,
    out: Path | None = None,
    overwrite: bool = False,
    opset: int = MIN_OPSET,
    check: bool = True,
) -> dict:
    """Export ``weights`` to ``out`` (default: next to the weights); return a summary with the
    largest differences against PyTorch on a random batch when ``check``.

    Raises:
        ConfigError: unknown format or opset too old. OutputExistsError: ``out`` exists.
    """
    from defectdet.model import model_from_checkpoint

    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; use {' or '.join(FORMATS)}")
    out = out or default_output(weights, fmt)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    model, cfg = model_from_checkpoint(weights, "cpu")
    names = list(cfg.class_names) or [f"class{k}" for k in range(cfg.num_classes)]
    if fmt == "onnx":
        if opset < MIN_OPSET:
            raise ConfigError(f"--opset must be ≥ {MIN_OPSET}, got {opset}")
        data = onnx_bytes(model, cfg.image_size, names, opset)
        diffs = check_onnx(model, data, cfg.image_size) if check else {}
    else:
        data = torchscript_bytes(model, cfg.image_size, names)
        diffs = check_torchscript(model, data, cfg.image_size) if check else {}
    with atomic_open(out, "wb") as fh:
        fh.write(data)
    return {
        "format": fmt,
        "out": str(out),
        "bytes": len(data),
        "image_size": cfg.image_size,
        "classes": names,
        "max_abs_diff": diffs,
    }


# ---------------------------------------------------------------------------- ONNX
class RawRetinaNet(nn.Module):
    """Backbone + FPN + head of a RetinaNet for (B, 3, S, S) float 0..1 input; returns
    ``cls_logits`` (B, A, K), ``bbox_regression`` (B, A, 4) and the constant ``anchors``
    (A, 4) in input pixels, in the order torchvision's post-processing expects."""

    def __init__(self, model: nn.Module, image_size: int) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        anchors, per_level = _fixed_anchors(model, image_size)
        self.register_buffer("anchors", anchors)
        self.anchors_per_level = per_level

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = (images - self.mean) / self.std
        out = self.head(list(self.backbone(x).values()))
        return out["cls_logits"], out["bbox_regression"], self.anchors


@torch.no_grad()
def _fixed_anchors(model: nn.Module, size: int) -> tuple[Tensor, list[int]]:
    """Anchors (A, 4) of an (S, S) input and the count per level, as RetinaNet computes them."""
    x = torch.zeros(1, 3, size, size)
    features = list(model.backbone(x).values())
    anchors = model.anchor_generator(ImageList(x, [(size, size)]), features)[0]
    per_cell = model.anchor_generator.num_anchors_per_location()[0]
    return anchors, [int(f.shape[2] * f.shape[3] * per_cell) for f in features]


def onnx_bytes(model: nn.Module, image_size: int, names: list[str], opset: int) -> bytes:
    """The serialised ONNX model with defectdet's metadata (see the module docstring)."""
    import onnx

    raw = RawRetinaNet(model, image_size).eval()
    example = torch.rand(2, 3, image_size, image_size)
    buf = io.BytesIO()
    batch = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter, not user-actionable
        torch.onnx.export(
            raw,
            (example,),
            buf,
            opset_version=opset,
            dynamo=False,
            input_names=["images"],
            output_names=["cls_logits", "bbox_regression", "anchors"],
            dynamic_axes={"images": batch, "cls_logits": batch, "bbox_regression": batch},
        )
    proto = onnx.load_from_string(buf.getvalue())
    meta = {
        "format": ONNX_FORMAT,
        "defectdet_version": __version__,
        "class_names": json.dumps(names),
        "image_size": str(image_size),
        "anchors_per_level": json.dumps(raw.anchors_per_level),
        "box_coder_weights": json.dumps(list(model.box_coder.weights)),
        "score_thresh": str(model.score_thresh),
        "nms_thresh": str(model.nms_thresh),
        "detections_per_img": str(model.detections_per_img),
        "topk_candidates": str(model.topk_candidates),
        "input": "images float32 (B, 3, S, S) RGB in 0..1, letterboxed (pad bottom/right)",
    }
    onnx.helper.set_model_props(proto, meta)
    proto.producer_name = "defectdet"
    return proto.SerializeToString()


def check_onnx(model: nn.Module, data: bytes, image_size: int) -> dict[str, float]:
    """Largest absolute differences between onnxruntime and PyTorch on a random batch of 3
    (another batch size than the export's, so the dynamic axis is exercised)."""
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = RawRetinaNet(model, image_size).eval()(x)
    got = session.run(None, {"images": x.numpy()})
    keys = ("cls_logits", "bbox_regression", "anchors")
    return {
        k: float((torch.from_numpy(g) - r).abs().max())
        for k, g, r in zip(keys, got, ref, strict=True)
    }


# ---------------------------------------------------------------------------- TorchScript
class _ScriptableNoExtra(ExtraFPNBlock):
    """``_NoExtraLevels`` with the type annotations TorchScript needs."""

    def forward(
        self, results: list[Tensor], x: list[Tensor], names: list[str]
    ) -> tuple[list[Tensor], list[str]]:
        return results, names


class _ScriptableP6(ExtraFPNBlock):
    """``_LastLevelP6`` with type annotations (same ``p6`` conv, so the same weights)."""

    def __init__(self, p6: nn.Conv2d) -> None:
        super().__init__()
        self.p6 = p6

    def forward(
        self, results: list[Tensor], x: list[Tensor], names: list[str]
    ) -> tuple[list[Tensor], list[str]]:
        results = results + [self.p6(results[-1])]  # noqa: RUF005 (TorchScript: no unpacking)
        return results, names + ["p6"]  # noqa: RUF005


def scriptable_copy(model: nn.Module, image_size: int) -> nn.Module:
    """A deep copy of ``model`` with its non-scriptable parts swapped (module docstring)."""
    m = copy.deepcopy(model).eval()
    m.transform = GeneralizedRCNNTransform(
        image_size, image_size, IMAGENET_MEAN, IMAGENET_STD, m.transform.size_divisible
    )
    extra = m.backbone.fpn.extra_blocks
    if isinstance(extra, _NoExtraLevels):
        m.backbone.fpn.extra_blocks = _ScriptableNoExtra()
    elif isinstance(extra, _LastLevelP6):
        m.backbone.fpn.extra_blocks = _ScriptableP6(extra.p6)
    old = m.head
    head = RetinaNetHead(1, 1, 1)  # placeholder branches, replaced by the trained ones
    head.classification_head = old.classification_head
    head.regression_head = old.regression_head
    m.head = head
    return m


def torchscript_bytes(model: nn.Module, image_size: int, names: list[str]) -> bytes:
    """The scripted detector, saved with ``extra/defectdet.json`` (classes, image size)."""
    extra = {
        "defectdet.json": json.dumps(
            {"class_names": names, "image_size": image_size, "defectdet_version": __version__}
        )
    }
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice; RetinaNet's tuple note
        scripted = torch.jit.script(scriptable_copy(model, image_size))
        torch.jit.save(scripted, buf, _extra_files=extra)
    return buf.getvalue()


def check_torchscript(model: nn.Module, data: bytes, image_size: int) -> dict[str, float]:
    """Largest box and score differences between the scripted and the eager detector on two
    random images (same detection count required)."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, image_size, image_size, generator=g) for _ in range(2)]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(io.BytesIO(data))
        ref = model(images)
        _, got = scripted(images)
    diffs = {"boxes": 0.0, "scores": 0.0}
    for r, o in zip(ref, got, strict=True):
        if len(r["boxes"]) != len(o["boxes"]):
            return {"boxes": float("inf"), "scores": float("inf")}
        for k in diffs:
            if len(r[k]):
                diffs[k] = max(diffs[k], float((r[k] - o[k]).abs().max()))
    return diffs
