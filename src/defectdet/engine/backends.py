"""Detectors behind ``predict``: the PyTorch model from a checkpoint, or an exported ONNX file run
by onnxruntime. Both take a uint8 (B, 3, S, S) batch and return, per image, ``boxes`` (N, 4)
xyxy in model-input pixels, ``scores`` (N,) and 0-based ``labels`` (N,) as CPU tensors.

The ONNX file holds the network only (backbone + FPN + head, see
:mod:`defectdet.engine.export`); anchors come with it as a constant output, and decoding, score
threshold, top-k and class-wise NMS run here with torchvision's own RetinaNet code, so both
backends share one post-processing implementation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.retinanet import RetinaNet

from defectdet.engine.evaluate import model_predictor
from defectdet.errors import CheckpointError, ConfigError

ONNX_FORMAT = "defectdet-retinanet-raw/1"


@dataclass
class PostprocessSettings:
    """What the model keeps: score threshold, NMS IoU, detections per image."""

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100


class TorchDetector:
    """A checkpoint's model on ``device``; ``half`` = fp16 autocast (CUDA only)."""

    def __init__(self, weights: str | Path, device: torch.device, half: bool = False) -> None:
        from defectdet.model import model_from_checkpoint, prepare_model

        model, cfg = model_from_checkpoint(weights, device)
        self.channels_last = device.type == "cuda"
        self.model = prepare_model(model, device, self.channels_last).eval()
        self.device, self.half = device, half
        self._predict = model_predictor(
            self.model, device, amp=half, channels_last=self.channels_last, dtype=torch.float16
        )
        self.class_names = list(cfg.class_names) or [f"class{k}" for k in range(cfg.num_classes)]
        self.image_size = int(cfg.image_size)
        self.settings = PostprocessSettings(
            float(cfg.score_thresh), float(cfg.nms_thresh), int(cfg.detections_per_img)
        )

    def configure(self, settings: PostprocessSettings) -> None:
        self.settings = settings
        self.model.score_thresh = settings.score_thresh
        self.model.nms_thresh = settings.nms_thresh
        self.model.detections_per_img = settings.detections_per_img

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """uint8 (B, 3, S, S) -> B dicts of CPU tensors (boxes in model-input pixels)."""
        preds = self._predict(batch)
        return [
            {k: v.float().cpu() if k != "labels" else v.cpu() for k, v in p.items()} for p in preds
        ]


class OnnxDetector:
    """An exported ``.onnx`` file through onnxruntime (CPU, or CUDA when its provider exists)."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"ONNX file {path} not found")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise CheckpointError(f"{path} is not a loadable ONNX model: {exc}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != ONNX_FORMAT:
            raise CheckpointError(
                f"{path} was not exported by defectdet export (metadata format "
                f"{meta.get('format')!r}, expected {ONNX_FORMAT!r})"
            )
        self.class_names = json.loads(meta["class_names"])
        self.image_size = int(meta["image_size"])
        self.anchors_per_level = json.loads(meta["anchors_per_level"])
        self.box_coder = det_utils.BoxCoder(tuple(json.loads(meta["box_coder_weights"])))
        self.topk_candidates = int(meta.get("topk_candidates", 1000))
        self.settings = PostprocessSettings(
            float(meta["score_thresh"]),
            float(meta["nms_thresh"]),
            int(meta["detections_per_img"]),
        )

    def configure(self, settings: PostprocessSettings) -> None:
        self.settings = settings

    def raw(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 or float (B, 3, S, S) -> cls_logits (B, A, K), bbox_regression (B, A, 4),
        anchors (A, 4)."""
        x = batch.float().div(255) if batch.dtype == torch.uint8 else batch.float()
        cls, reg, anchors = self.session.run(None, {"images": x.numpy()})
        return torch.from_numpy(cls), torch.from_numpy(reg), torch.from_numpy(anchors)

    def __call__(self, batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        cls, reg, anchors = self.raw(batch)
        return decode_detections(
            cls,
            reg,
            anchors,
            self.anchors_per_level,
            self.image_size,
            self.box_coder,
            self.settings,
            self.topk_candidates,
        )


def decode_detections(
    cls_logits: torch.Tensor,
    bbox_regression: torch.Tensor,
    anchors: torch.Tensor,
    anchors_per_level: list[int],
    image_size: int,
    box_coder: det_utils.BoxCoder,
    settings: PostprocessSettings,
    topk_candidates: int = 1000,
) -> list[dict[str, torch.Tensor]]:
    """Raw head outputs -> per-image detections, by torchvision's ``postprocess_detections``
    (per level: sigmoid, threshold, top-k; decode; clip; class-wise NMS; keep the best)."""
    shim = SimpleNamespace(
        box_coder=box_coder,
        score_thresh=settings.score_thresh,
        nms_thresh=settings.nms_thresh,
        detections_per_img=settings.detections_per_img,
        topk_candidates=topk_candidates,
    )
    split = {
        "cls_logits": list(cls_logits.split(anchors_per_level, dim=1)),
        "bbox_regression": list(bbox_regression.split(anchors_per_level, dim=1)),
    }
    per_level = list(anchors.split(anchors_per_level))
    n = cls_logits.shape[0]
    shapes = [(image_size, image_size)] * n
    return RetinaNet.postprocess_detections(shim, split, [per_level] * n, shapes)


def load_detector(
    weights: str | Path, backend: str, device: torch.device, half: bool = False
) -> TorchDetector | OnnxDetector:
    """The detector for ``--backend``; checks that ``weights`` is the right kind of file."""
    suffix = Path(weights).suffix.lower()
    if backend == "torch":
        if suffix == ".onnx":
            raise ConfigError(f"{weights} is an ONNX file; pass --backend onnxruntime")
        return TorchDetector(weights, device, half)
    if backend == "onnxruntime":
        if suffix != ".onnx":
            raise ConfigError(
                f"--backend onnxruntime needs an exported .onnx file as --weights, got {weights} "
                "(make one with: defectdet export --weights W --format onnx)"
            )
        if half:
            raise ConfigError("--half is for the torch backend on CUDA, not onnxruntime")
        return OnnxDetector(weights, device)
    raise ConfigError(f"unknown --backend {backend!r}; use torch or onnxruntime")
