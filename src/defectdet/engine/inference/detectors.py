"""Detectors: one interface for every backend. A detector has ``class_names``, ``image_size``
and ``configure(PostprocessSettings)``, and is called on uint8 (B, 3, S, S) batches; it
returns, per image, ``boxes`` (N, 4) xyxy in model-input pixels, ``scores`` (N,) and 0-based
``labels`` (N,) as CPU tensors, and ``image_score`` (a 0-d tensor) from a model with an image
head.

- :class:`TorchDetector`: a model in memory (train-time validation) or from a checkpoint.
- :class:`OnnxDetector`: an exported ``.onnx`` file run by onnxruntime. The file holds the
  network only (see :mod:`defectdet.engine.export`); decoding runs here with the same
  :func:`~defectdet.model.postprocess.decode_detections` as the PyTorch model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torchvision.models.detection import _utils as det_utils

from defectdet.errors import CheckpointError, ConfigError
from defectdet.model.device import amp_dtype, to_model_input
from defectdet.model.postprocess import PostprocessSettings, decode_detections
from defectdet.model.spec import ModelSpec

ONNX_FORMAT = "defectdet-retinanet-raw/1"


class Detector(Protocol):
    class_names: list[str]
    image_size: int
    operating_point: dict | None  # calibrated thresholds and their evidence, when stored
    trained_on: frozenset[str]  # resolved paths of the training images, when stored
    train_tile: int  # the tile size the model was trained on; inference tiles so by default
    image_head: bool  # the model scores each image as a whole too (``image_score``)

    def configure(self, settings: PostprocessSettings) -> None: ...

    def __call__(self, batch: torch.Tensor) -> list[dict[str, torch.Tensor]]: ...


class TorchDetector:
    """A RetinaNet on ``device``; ``amp`` autocasts (to ``dtype``, default :func:`amp_dtype`)."""

    def __init__(
        self,
        model: nn.Module,
        class_names: list[str],
        image_size: int,
        device: torch.device,
        amp: bool = False,
        channels_last: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.model, self.class_names, self.image_size = model, list(class_names), int(image_size)
        self.device, self.amp, self.channels_last = device, amp, channels_last
        self.dtype = dtype or amp_dtype(device)
        self.operating_point: dict | None = None
        self.trained_on: frozenset[str] = frozenset()
        self.train_tile = 0  # the tile size the model was trained on (0 = whole images)
        self.image_head = getattr(model.head, "image_head", None) is not None

    @classmethod
    def for_spec(
        cls,
        model: nn.Module,
        spec: ModelSpec,
        device: torch.device,
        amp: bool = False,
        channels_last: bool = False,
        dtype: torch.dtype | None = None,
    ) -> TorchDetector:
        """A detector for ``model`` as its spec describes it (classes, input size, train tile)."""
        detector = cls(model, spec.class_names, spec.image_size, device, amp, channels_last, dtype)
        detector.train_tile = spec.train_tile
        return detector

    @classmethod
    def from_checkpoint(
        cls, weights: str | Path, device: torch.device, half: bool = False
    ) -> TorchDetector:
        """``half`` = fp16 autocast (CUDA only); channels-last on CUDA."""
        from defectdet.model import load_checkpoint, load_model, prepare_model

        ckpt = load_checkpoint(weights)
        model, spec = load_model(ckpt, device, where=str(weights))
        channels_last = device.type == "cuda"
        model = prepare_model(model, device, channels_last).eval()
        detector = cls.for_spec(model, spec, device, half, channels_last, torch.float16)
        detector.operating_point = ckpt.get("operating_point") or None
        detector.trained_on = frozenset(ckpt.get("trained_on") or ())
        return detector

    def configure(self, settings: PostprocessSettings) -> None:
        self.model.configure(settings)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """uint8 (B, 3, S, S) -> B dicts of CPU tensors (boxes in model-input pixels)."""
        was_training = self.model.training
        self.model.eval()
        try:
            x = to_model_input(batch, self.device, self.channels_last)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp):
                preds = self.model(list(x))
        finally:
            self.model.train(was_training)
        return [
            {k: v.float().cpu() if k != "labels" else v.cpu() for k, v in p.items()} for p in preds
        ]


class OnnxDetector:
    """An exported ``.onnx`` file through onnxruntime (CPU, or CUDA when its provider exists)."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        ort = import_onnxruntime()
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
        self.settings = PostprocessSettings(
            float(meta["score_thresh"]),
            float(meta["nms_thresh"]),
            int(meta["detections_per_img"]),
            int(meta.get("topk_candidates", 1000)),
        )
        self.operating_point = json.loads(meta.get("operating_point") or "null")
        self.trained_on = frozenset()  # a deployment file does not list the training images
        self.train_tile = int(meta.get("train_tile") or 0)
        self.image_head = len(self.session.get_outputs()) > 3  # image_logits after anchors

    def configure(self, settings: PostprocessSettings) -> None:
        self.settings = settings

    def raw(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """uint8 or float (B, 3, S, S) -> cls_logits (B, A, K), bbox_regression (B, A, 4),
        anchors (A, 4) and, from a model with an image head, image_logits (B,)."""
        x = batch.float().div(255) if batch.dtype == torch.uint8 else batch.float()
        return tuple(torch.from_numpy(a) for a in self.session.run(None, {"images": x.numpy()}))

    def __call__(self, batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        cls, reg, anchors, *image = self.raw(batch)
        split = self.anchors_per_level
        dets = decode_detections(
            list(cls.split(split, dim=1)),
            list(reg.split(split, dim=1)),
            list(anchors.split(split)),
            [(self.image_size, self.image_size)] * cls.shape[0],
            self.box_coder,
            self.settings,
        )
        for det, logit in zip(dets, image[0].sigmoid() if image else (), strict=False):
            det["image_score"] = logit
        return dets


def import_onnxruntime():
    """onnxruntime, or one message saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(
            "the onnxruntime backend needs onnxruntime: pip install 'defectdet[onnx]'"
        ) from None
    return onnxruntime


def load_detector(
    weights: str | Path, backend: str, device: torch.device, half: bool = False
) -> TorchDetector | OnnxDetector:
    """The detector for ``--backend``; checks that ``weights`` is the right kind of file."""
    suffix = Path(weights).suffix.lower()
    if backend == "torch":
        if suffix == ".onnx":
            raise ConfigError(f"{weights} is an ONNX file; pass --backend onnxruntime")
        return TorchDetector.from_checkpoint(weights, device, half)
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
