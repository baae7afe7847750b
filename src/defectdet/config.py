"""One typed, resolved configuration per run: the CLI builds it, the engine reads it, and each run
saves it as ``config.yaml`` next to its weights (enough to reproduce the run).

Every section is a dataclass with defaults; ``load_config`` merges a YAML file, and ``override``
applies CLI options on top. Unknown keys are an error, not silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from defectdet.errors import ConfigError

Backbone = Literal["resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large"]


@dataclass
class DataConfig:
    path: str = "data/"
    format: str = "auto"  # auto|coco|voc|yolo|csv
    strict: bool = False
    val_fraction: float = 0.2  # used only when the data has no validation split
    train_split: str = ""  # "" = chosen automatically (train/trainval)
    val_split: str = ""  # "" = chosen automatically (val/valid/test)


@dataclass
class ModelConfig:
    backbone: Backbone = "resnet18"
    head: Literal["v1", "v2"] = "v1"  # v2: GroupNorm head and GIoU box loss (torchvision v2)
    head_convs: int = 4  # conv layers per head branch (torchvision: 4)
    fpn_channels: int = 256  # FPN and head width (torchvision: 256)
    min_level: int = 3  # lowest pyramid level (P3 = stride 8)
    max_level: int = 7  # highest pyramid level (P7 = stride 128)
    image_size: int = 0  # longest side fed to the model; 0 = chosen from the data
    anchors: str = "default"  # default|auto
    anchor_sizes: list[float] = field(default_factory=list)  # resolved, one base size per level
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    weights: str = ""  # ""|coco|PATH to a defectdet checkpoint (fine-tune)
    backbone_weights: str = "none"  # none|imagenet|PATH
    trainable_backbone_layers: int = 3
    score_thresh: float = 0.05  # detections kept for evaluation
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    num_classes: int = 0  # resolved from the data
    class_names: list[str] = field(default_factory=list)  # resolved from the data


@dataclass
class LossConfig:
    loss: Literal["focal", "ce"] = "focal"
    gamma: float = 2.0
    alpha: float = 0.25  # weight of positives; negative disables alpha-balancing
    class_weights: str = "none"  # none|inverse|sqrt-inverse|effective[:BETA]|name=W,...
    class_weight_values: list[float] = field(default_factory=list)  # resolved per class
    normalizer: Literal["batch", "ema", "image"] = "batch"  # what the loss is divided by


@dataclass
class SamplerConfig:
    sampler: Literal["none", "repeat-factor", "class-aware"] = "none"
    repeat_threshold: float = 0.1
    background_fraction: float = 1.0  # share of background-only images kept each epoch
    undersample_majority: float = 1.0  # share of majority-only images kept each epoch


@dataclass
class AugmentConfig:
    preset: Literal["none", "light", "medium", "heavy"] = "light"
    minority: bool = False  # stronger pipeline for images that hold a rare class
    copy_paste: float = 0.0  # probability of pasting rare-class crops onto an image
    rotate90: bool = True  # 90-degree rotations (disable where orientation matters)


@dataclass
class OptimConfig:
    epochs: int = 20
    batch_size: int = 8
    lr: float = 0.01
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "step"] = "cosine"
    warmup_iters: int = 100
    step_milestones: list[float] = field(default_factory=lambda: [0.67, 0.89])  # epoch fractions
    grad_clip: float = 10.0


@dataclass
class RunConfig:
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    seed: int = 0
    workers: int = -1  # -1 = auto (data.dataset.resolve_workers)
    device: str = "auto"  # auto|cpu|cuda|cuda:N
    amp: bool | None = None  # None = on for CUDA
    channels_last: bool | None = None  # None = on for CUDA
    eval_interval: int = 1
    select_metric: str = "mean_class_ap50"
    patience: int = 0  # 0 = no early stopping
    conf: float = 0.3  # score threshold for image-level verdicts
    max_steps: int = 0  # stop after this many steps (0 = no limit; for smoke tests)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------- (de)serialising
def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:  # YAML keys may be numbers, dates...: name them as text
        raise ConfigError(
            f"unknown option(s) {', '.join(sorted(map(str, unknown)))} in {where or cls.__name__}; "
            f"known: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = "|".join(map(str, typing.get_args(tp)))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, where) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # YAML .nan / .inf
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    return value


class _SafeLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without aliases: ``*name`` references make "billion laughs" files
    (a few hundred bytes that expand to 10⁹ values when printed or walked), and configs and
    data.yaml files do not need them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed", event.start_mark
            )
        return super().compose_node(parent, index)


def safe_yaml(text: str) -> Any:
    """Parse YAML text into plain data (no Python objects, no aliases); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_SafeLoader)  # a SafeLoader subclass


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc
    try:
        data = safe_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(path: str | Path | None = None) -> TrainConfig:
    """Defaults, with a YAML file (sections data/model/loss/...) merged on top."""
    if not path:
        return TrainConfig()
    try:
        return from_dict(TrainConfig, load_yaml(path))
    except ConfigError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {exc}") from None


def override(cfg: TrainConfig, updates: dict[str, Any]) -> TrainConfig:
    """Apply ``{"section.key": value}`` updates (None values are skipped: option not given)."""
    nested = cfg.to_dict()
    for dotted, value in updates.items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        if section not in nested or key not in nested[section]:
            raise ConfigError(f"unknown option {dotted}")
        nested[section][key] = value
    return from_dict(TrainConfig, nested)
