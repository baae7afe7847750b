"""``defectdet export``: a checkpoint as ONNX (for onnxruntime) or TorchScript.

ONNX: the *network* only. torchvision's RetinaNet post-processing loops over the images of a
batch in Python, so exporting the whole detector bakes the batch size in (the tracer unrolls
the loop) and data-dependent shapes (top-k, NMS) are awkward in ONNX. The graph therefore maps
``images`` float32 (B, 3, S, S) in 0..1 (normalised inside the graph; B dynamic, S fixed) to
``cls_logits`` (B, A, K) and ``bbox_regression`` (B, A, 4), with ``anchors`` (A, 4) as a
constant third output (and ``image_logits`` (B,) fourth, for a model with an image head);
decoding, thresholds and class-wise NMS run outside it with the same
decoding as the PyTorch model (:func:`defectdet.model.postprocess.decode_detections`). Class
names, image size, anchors per level and the post-processing defaults are stored in
``metadata_props``.

TorchScript: the complete detector (pre-processing, post-processing, any input size) via
``torch.jit.script`` of torchvision's own ``RetinaNet`` assembled from the trained parts: the
same backbone, FPN and anchors, the head's branches in a plain ``RetinaNetHead`` (its loss is
not needed to infer) and ``GeneralizedRCNNTransform`` with the same size and normalisation.

Both checks run on an image prepared by :func:`defectdet.data.preprocess.letterbox`, the
preprocessing of every inference path.
In scripting, RetinaNet returns ``(losses, detections)``; class names and image size are in the
archive's ``extra/defectdet.json``.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead

from defectdet import __version__
from defectdet.data.preprocess import letterbox
from defectdet.engine.inference.detectors import ONNX_FORMAT, import_onnxruntime
from defectdet.errors import ConfigError, DefectdetError, OutputExistsError
from defectdet.io import atomic_open
from defectdet.model.build import IMAGENET_MEAN, IMAGENET_STD

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
    images: str | Path | None = None,
) -> dict:
    """Export ``weights`` to ``out`` (default: next to the weights). With ``check``, the export
    is compared with PyTorch on sample images (``images``: an image, folder, glob or list, as
    for predict; generated ones otherwise) and refused when boxes differ by more than
    :data:`BOX_TOL` px or scores by more than :data:`SCORE_TOL`. The checkpoint's operating
    point (calibrated thresholds) goes into the export's metadata.

    Raises:
        ConfigError: unknown format or opset too old. OutputExistsError: ``out`` exists.
        ExportCheckError: the export does not reproduce PyTorch within the tolerances.
    """
    from defectdet.model import load_checkpoint, load_model

    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; use {' or '.join(FORMATS)}")
    out = out or default_output(weights, fmt)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    if fmt == "onnx" and opset < MIN_OPSET:
        raise ConfigError(f"--opset must be ≥ {MIN_OPSET}, got {opset}")
    if fmt == "onnx":
        _import_onnx()  # before the model load: a missing extra is one clear line
    ckpt = load_checkpoint(weights)
    model, spec = load_model(ckpt, "cpu", where=str(weights))
    names, size, op = spec.class_names, spec.image_size, ckpt.get("operating_point")
    batch = sample_batch(size, 3, images) if check else None
    if fmt == "onnx":
        data = onnx_bytes(model, size, names, opset, op, spec.train_tile)
        diffs = check_onnx(model, data, batch) if check else {}
    elif spec.image_head:
        raise ConfigError(
            "TorchScript export holds torchvision's own RetinaNet, which has no image head: "
            "export this model with --format onnx"
        )
    else:
        data = torchscript_bytes(model, size, names, op)
        diffs = check_torchscript(model, data, batch) if check else {}
    enforce_tolerances(diffs, out)
    with atomic_open(out, "wb") as fh:
        fh.write(data)
    return {
        "format": fmt,
        "out": str(out),
        "bytes": len(data),
        "image_size": size,
        "classes": names,
        "calibrated": op is not None,
        "max_abs_diff": diffs,
    }


class ExportCheckError(DefectdetError):
    """The exported model does not reproduce PyTorch within the stated tolerances."""


BOX_TOL = 0.5  # px, model-input pixels
SCORE_TOL = 1e-4  # on scores in 0..1


def enforce_tolerances(diffs: dict[str, float], out: Path) -> None:
    """Refuse an export whose boxes or scores differ from PyTorch beyond the tolerances."""
    over = [
        f"{k} differ by up to {diffs[k]:.3g} (tolerance {tol:g})"
        for k, tol in (("boxes", BOX_TOL), ("scores", SCORE_TOL))
        if k in diffs and not diffs[k] <= tol
    ]
    if over:
        raise ExportCheckError(
            f"the export does not reproduce PyTorch: {'; '.join(over)}; {out} was not written "
            "(--no-check skips the check)"
        )


# ---------------------------------------------------------------------------- ONNX
class RawRetinaNet(nn.Module):
    """Backbone + FPN + head of a RetinaNet for (B, 3, S, S) float 0..1 input; returns
    ``cls_logits`` (B, A, K), ``bbox_regression`` (B, A, 4) and the constant ``anchors``
    (A, 4) in input pixels, in the order torchvision's post-processing expects; then
    ``image_logits`` (B,) when the head has an image head."""

    def __init__(self, model: nn.Module, image_size: int) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        anchors, per_level = _fixed_anchors(model, image_size)
        self.register_buffer("anchors", anchors)
        self.anchors_per_level = per_level

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        x = (images - self.mean) / self.std
        out = self.head(list(self.backbone(x).values()))
        raw = (out["cls_logits"], out["bbox_regression"], self.anchors)
        return (*raw, out["image_logits"]) if "image_logits" in out else raw


@torch.no_grad()
def _fixed_anchors(model: nn.Module, size: int) -> tuple[Tensor, list[int]]:
    """Anchors (A, 4) of an (S, S) input and the count per level, as RetinaNet computes them."""
    x = torch.zeros(1, 3, size, size)
    features = list(model.backbone(x).values())
    anchors = model.anchor_generator(ImageList(x, [(size, size)]), features)[0]
    per_cell = model.anchor_generator.num_anchors_per_location()[0]
    return anchors, [int(f.shape[2] * f.shape[3] * per_cell) for f in features]


def onnx_bytes(
    model: nn.Module,
    image_size: int,
    names: list[str],
    opset: int,
    operating_point: dict | None = None,
    train_tile: int = 0,
) -> bytes:
    """The serialised ONNX model with defectdet's metadata (see the module docstring)."""
    onnx = _import_onnx()
    raw = RawRetinaNet(model, image_size).eval()
    example = torch.rand(2, 3, image_size, image_size)
    buf = io.BytesIO()
    outputs = ["cls_logits", "bbox_regression", "anchors"]
    if getattr(model.head, "image_head", None) is not None:
        outputs.append("image_logits")
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
            output_names=outputs,
            dynamic_axes={"images": batch, **{k: batch for k in outputs if k != "anchors"}},
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
        "operating_point": json.dumps(operating_point),
        "train_tile": str(int(train_tile)),  # predict tiles as trained unless told otherwise
    }
    onnx.helper.set_model_props(proto, meta)
    proto.producer_name = "defectdet"
    return proto.SerializeToString()


def check_onnx(model: nn.Module, data: bytes, batch: Tensor) -> dict[str, float]:
    """Largest differences between onnxruntime and PyTorch on ``batch`` (3 images, another
    batch size than the export's, so the dynamic axis is exercised): ``scores`` (sigmoid of
    every anchor's class logits) and ``boxes`` (every anchor's decoded box, input pixels)."""
    ort = import_onnxruntime()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = RawRetinaNet(model, batch.shape[-1]).eval()(batch)
    got = [torch.from_numpy(a) for a in session.run(None, {"images": batch.numpy()})]

    def boxes(regression: Tensor, anchors: Tensor) -> Tensor:
        flat = regression.reshape(-1, 4)
        return model.box_coder.decode_single(flat, anchors.repeat(len(regression), 1))

    diffs = {
        "scores": float((got[0].sigmoid() - ref[0].sigmoid()).abs().max()),
        "boxes": float((boxes(got[1], got[2]) - boxes(ref[1], ref[2])).abs().max()),
    }
    if len(ref) > 3:  # the image head's probability is a score too
        image = float((got[3].sigmoid() - ref[3].sigmoid()).abs().max())
        diffs["scores"] = max(diffs["scores"], image)
    return diffs


def _real_images(source: str | Path, image_size: int, n: int) -> list[Tensor]:
    from defectdet.data.images import ImageError, load_rgb
    from defectdet.engine.inference.sources import list_sources

    out = []
    for src in list_sources(source):
        try:
            image = load_rgb(src.path)
        except ImageError:
            continue
        out.append(torch.from_numpy(letterbox(image, image_size)).permute(2, 0, 1))
        if len(out) == n:
            break
    return out


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ConfigError(
            "ONNX export needs the onnx package: pip install 'defectdet[onnx]'"
        ) from None
    return onnx


def sample_batch(image_size: int, n: int, images: str | Path | None = None) -> Tensor:
    """(n, 3, S, S) float 0..1 prepared by the inference preprocessing (letterboxed): the first
    readable images of ``images`` (as predict reads SOURCE), else textured, non-square
    generated ones, so padding and resizing are part of the check."""
    out = _real_images(images, image_size, n) if images is not None else []
    rng = np.random.default_rng(0)
    for i in range(n - len(out)):
        h, w = int(image_size * (0.6 + 0.2 * i)), int(image_size * 1.3)
        base = rng.integers(60, 200, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        image = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
        image = (image + rng.integers(0, 20, image.shape)).astype(np.uint8)
        out.append(torch.from_numpy(letterbox(image, image_size)).permute(2, 0, 1))
    return torch.stack(out).float() / 255


# ---------------------------------------------------------------------------- TorchScript
def scriptable_copy(model: nn.Module, image_size: int) -> nn.Module:
    """torchvision's ``RetinaNet`` with ``model``'s trained parts (module docstring)."""
    head = RetinaNetHead(1, 1, 1)  # placeholder branches, replaced by the trained ones
    head.classification_head = model.head.classification_head
    head.regression_head = model.head.regression_head
    s = model.settings
    plain = RetinaNet(
        model.backbone,
        model.head.classification_head.num_classes,
        min_size=image_size,
        max_size=image_size,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        anchor_generator=model.anchor_generator,
        head=head,
        score_thresh=s.score_thresh,
        nms_thresh=s.nms_thresh,
        detections_per_img=s.detections_per_img,
        topk_candidates=s.topk_candidates,
    )
    return plain.eval()


def torchscript_bytes(
    model: nn.Module, image_size: int, names: list[str], operating_point: dict | None = None
) -> bytes:
    """The scripted detector, saved with ``extra/defectdet.json`` (classes, image size, the
    operating point)."""
    info = {
        "class_names": names,
        "image_size": image_size,
        "defectdet_version": __version__,
        "operating_point": operating_point,
    }
    extra = {"defectdet.json": json.dumps(info)}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice; RetinaNet's tuple note
        scripted = torch.jit.script(scriptable_copy(model, image_size))
        torch.jit.save(scripted, buf, _extra_files=extra)
    return buf.getvalue()


def check_torchscript(model: nn.Module, data: bytes, batch: Tensor) -> dict[str, float]:
    """Largest box and score differences between the scripted and the eager detector on the
    sample images (same detection count required)."""
    images = list(batch)
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
