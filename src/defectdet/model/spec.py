"""What a model *is*: the architecture and everything resolved from the data, enough to rebuild
it for inference without the training config (saved in every checkpoint as ``model_spec``).

The user's options (:class:`defectdet.config.ModelConfig`) say what was asked for (``image_size
0`` = from the data, ``anchors auto``); the spec says what was built (the image size, the fitted
anchor sizes and aspect ratios, the class names).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from defectdet.config import ModelConfig
from defectdet.errors import CheckpointError

SIZE_DIVISIBLE = 32
INITS = ("scratch", "pretrained", "coco")


@dataclass
class ModelSpec:
    """Architecture and resolved values of one RetinaNet.

    ``init`` fixes the normalisation layers: ``scratch`` trains BatchNorm; ``pretrained`` and
    ``coco`` freeze it, as torchvision does for pretrained backbones (COCO weights also use
    eps 0).
    """

    class_names: list[str]
    image_size: int
    backbone: str = "resnet18"
    head: str = "v1"
    head_convs: int = 4
    fpn_channels: int = 256
    min_level: int = 3
    max_level: int = 7
    anchor_sizes: list[float] = field(default_factory=list)  # one base size per level; [] = default
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    init: str = "scratch"
    train_tile: int = 0  # trained on crops of this many px of the originals (0 = whole images)
    image_head: bool = False  # an image-level defect/ok logit beside the boxes

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def pretrained(self) -> bool:
        return self.init != "scratch"

    @classmethod
    def from_config(
        cls,
        cfg: ModelConfig,
        class_names: list[str],
        image_size: int,
        anchor_sizes: list[float] | None = None,
        aspect_ratios: list[float] | None = None,
    ) -> ModelSpec:
        """The spec of ``cfg`` once the data has decided the rest."""
        init = "coco" if cfg.weights == "coco" else "scratch"
        if (cfg.weights and cfg.weights != "coco") or cfg.backbone_weights != "none":
            init = "pretrained"
        return cls(
            class_names=list(class_names),
            image_size=int(image_size),
            backbone=cfg.backbone,
            head=cfg.head,
            head_convs=cfg.head_convs,
            fpn_channels=cfg.fpn_channels,
            min_level=cfg.min_level,
            max_level=cfg.max_level,
            anchor_sizes=list(anchor_sizes or []),
            aspect_ratios=list(aspect_ratios or [0.5, 1.0, 2.0]),
            init=init,
            train_tile=cfg.train_tile,
            image_head=cfg.image_head > 0,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "checkpoint") -> ModelSpec:
        if not isinstance(data, dict):
            raise CheckpointError(f"{where} has no model spec")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown or "class_names" not in data or "image_size" not in data:
            raise CheckpointError(
                f"{where}: its model spec does not fit this version "
                f"(unknown {sorted(unknown)} or missing class_names/image_size)"
            )
        return cls(**data)

    @classmethod
    def from_legacy_config(cls, config: Any, where: str = "checkpoint") -> ModelSpec:
        """The spec of a checkpoint written by defectdet 0.1 (its ``config.model`` section)."""
        model = config.get("model") if isinstance(config, dict) else None
        if not isinstance(model, dict):
            raise CheckpointError(f"{where} has no saved model config (config.model)")
        names = model.get("class_names") or [
            f"class{k}" for k in range(int(model.get("num_classes") or 0))
        ]
        if not names or not model.get("image_size"):
            raise CheckpointError(f"{where} has no saved model spec (classes and image size)")
        pretrained = model.get("backbone_weights", "none") != "none" or bool(model.get("weights"))
        try:
            return cls(
                class_names=list(names),
                image_size=int(model["image_size"]),
                backbone=model.get("backbone", "resnet18"),
                head=model.get("head", "v1"),
                head_convs=int(model.get("head_convs", 4)),
                fpn_channels=int(model.get("fpn_channels", 256)),
                min_level=int(model.get("min_level", 3)),
                max_level=int(model.get("max_level", 7)),
                anchor_sizes=list(model.get("anchor_sizes") or []),
                aspect_ratios=list(model.get("aspect_ratios") or [0.5, 1.0, 2.0]),
                init="coco"
                if model.get("weights") == "coco"
                else "pretrained"
                if pretrained
                else "scratch",
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{where}: saved config does not fit this version: {exc}"
            ) from None
