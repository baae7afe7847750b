"""Every option of defectdet, defined once: name, type, default, allowed values and help.

``TrainConfig`` is what ``train`` and ``compare`` take (saved as ``config.yaml``); its inference
sections (thresholds, calibration) come from :mod:`.inference`, shared with ``evaluate``,
``predict`` and ``calibrate``. Values derived from the data
(class names, the resolved image size, anchors, class-weight values) are not here: they live in
the run's resolved spec (:mod:`defectdet.model.spec`, ``resolved.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from defectdet.config import values as v
from defectdet.config.checks import (
    SELECT_METRICS,
    check_class_weights,
    check_coco,
    check_image_size,
    check_levels,
    check_patience,
    check_select_metric,
    check_tile,
)
from defectdet.config.inference import (
    CalibrateConfig,
    InferConfig,
    RuntimeConfig,
    batch_size_option,
    device_option,
    workers_option,
)
from defectdet.config.presets import PRESET_CHOICES
from defectdet.config.schema import opt

_D, _M, _L, _S, _A, _O, _R = (
    "Data",
    "Model",
    "Loss",
    "Sampling (imbalance)",
    "Augmentation",
    "Optimisation",
    "Run",
)
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large")
FORMATS = ("auto", "coco", "voc", "yolo", "csv")


@dataclass
class DataConfig:
    path: str = opt("data/", "Dataset folder or annotation file.", cli=False)
    format: str = opt(
        "auto", "Annotation format: auto, coco, voc, yolo or csv.", choices=FORMATS, panel=_D
    )
    strict: bool = opt(False, "Fail on any problem in the data instead of skipping it.", panel=_D)
    val_fraction: float = opt(
        0.2,
        "Validation share when the data has no validation split.",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
        panel=_D,
    )
    negatives: list[str] = opt(  # noqa: RUF009 (opt returns a field with a factory)
        [],
        "A folder of good parts (every image under it is defect-free, no annotations needed); "
        "repeat for several.",
        panel=_D,
    )
    train_split: str = opt("", "Training split name ('' = train or trainval).", panel=_D)
    val_split: str = opt("", "Validation split name ('' = val, valid or test).", panel=_D)


@dataclass
class ModelConfig:
    preset: str = opt(
        "auto",
        "Recipe: n, s, m or l set the backbone, head, pyramid levels, input size cap, optimiser "
        "and augmentation together (options you give win); auto = n on CPU, m on a GPU; "
        "none = the plain defaults below.",
        choices=PRESET_CHOICES,
        panel=_M,
    )
    backbone: str = opt(
        "resnet18", "Backbone: " + ", ".join(BACKBONES) + ".", choices=BACKBONES, panel=_M
    )
    head: str = opt(
        "v1", "v1, or v2 (GroupNorm head, GIoU box loss).", choices=("v1", "v2"), panel=_M
    )
    head_convs: int = opt(
        4, "Convs per head branch (torchvision: 4); fewer = faster.", low=0, high=8, panel=_M
    )
    fpn_channels: int = opt(
        256,
        "FPN and head width (torchvision: 256); 64-128 is much faster on CPU.",
        low=8,
        high=1024,
        panel=_M,
    )
    levels: str = opt(
        "3-7",
        "Pyramid levels, e.g. 3-7 (torchvision) or 3-5 for small images.",
        check=check_levels,
        allowed="LOW-HIGH with LOW 2 or 3 and HIGH 5, 6 or 7",
        panel=_M,
    )
    image_size: int = opt(
        0,
        "Longest side fed to the model (0 = from the data).",
        low=0,
        check=check_image_size,
        allowed="0 (from the data) or a multiple of 32",
        panel=_M,
    )
    image_head: float = opt(
        0.0,
        "Weight of an image-level defect/ok head beside the detector (pooled FPN features, "
        "binary cross-entropy on every image, good parts included, so they teach more than "
        "easy background anchors); its probability joins the best box score in the per-image "
        "defect score that ranks images (AUROC, ROC, images.csv); the pass/fail verdict stays "
        "with the boxes (0 = off).",
        low=0,
        high=10,
        panel=_M,
    )
    train_tile: int = opt(
        0,
        "Train on random SIZE px crops of the original images (native resolution; at least "
        "half of them centred on a defect) instead of whole images, and validate tiled the "
        "same way, as predict and evaluate then run by default (0 = whole images). For large "
        "images with small defects.",
        low=0,
        check=check_tile,
        allowed="0 (off) or at least 32",
        panel=_M,
    )
    max_image_size: int = opt(
        1024,
        "With --image-size 0: the size from the data (median longest side), capped here.",
        low=32,
        check=check_image_size,
        allowed="a multiple of 32, at least 32",
        panel=_M,
    )
    anchors: str = opt(
        "default",
        "default, or auto (sizes and aspect ratios fitted to your boxes).",
        choices=("default", "auto"),
        panel=_M,
    )
    weights: str = opt("", "Start from: a defectdet checkpoint PATH, or coco.", panel=_M)
    backbone_weights: str = opt("none", "Backbone weights: none, imagenet or PATH.", panel=_M)
    trainable_backbone_layers: int = opt(
        3, "Backbone stages trained when starting from pretrained weights.", low=0, high=6, panel=_M
    )

    @property
    def min_level(self) -> int:
        return v.parse_levels(self.levels)[0]

    @property
    def max_level(self) -> int:
        return v.parse_levels(self.levels)[1]


@dataclass
class LossConfig:
    loss: str = opt(
        "focal",
        "Classification loss: focal, or ce (plain sigmoid cross-entropy).",
        choices="defectdet.model.criterion:CLASSIFICATION_LOSSES",
        panel=_L,
    )
    gamma: float = opt(2.0, "Focal γ ≥ 0; 0 = α-balanced cross-entropy.", low=0, panel=_L)
    alpha: float = opt(0.25, "Focal α, the weight of positives; < 0 disables it.", high=1, panel=_L)
    class_weights: str = opt(
        "none",
        "none, inverse, sqrt-inverse, effective[:BETA] or name=W,...",
        check=check_class_weights,
        allowed="none, inverse, sqrt-inverse, effective[:BETA] or name=W,... (W ≥ 0)",
        panel=_L,
    )
    normalizer: str = opt(
        "batch",
        "Loss divided by the batch's foreground anchors (batch), their EMA (ema) or per image "
        "(image).",
        choices=("batch", "ema", "image"),
        panel=_L,
    )


@dataclass
class SamplerConfig:
    sampler: str = opt(
        "none",
        "none, repeat-factor or class-aware.",
        choices=("none", "repeat-factor", "class-aware"),
        panel=_S,
    )
    repeat_threshold: float = opt(
        0.1, "LVIS repeat-factor threshold t.", low=0, high=1, low_open=True, panel=_S
    )
    background_fraction: float = opt(
        1.0,
        "Share of defect-free images used each epoch (they take turns; 0 = none).",
        low=0,
        high=1,
        panel=_S,
    )
    undersample_majority: float = opt(
        1.0,
        "Share of majority-only images used each epoch.",
        low=0,
        high=1,
        low_open=True,
        panel=_S,
    )
    hard_negatives: bool = opt(
        False,
        "Hard-negative mining: score the defect-free training images with the current model and "
        "draw those it flags more often.",
        panel=_S,
    )
    hard_fraction: float = opt(
        0.5,
        "With --hard-negatives: share of defect-free draws weighted by score (the rest uniform, "
        "so every image is still seen).",
        low=0,
        high=1,
        panel=_S,
    )
    mine_interval: int = opt(
        1,
        "With --hard-negatives: mine at least every N epochs (and at each validation).",
        low=1,
        panel=_S,
    )
    mine_max: int = opt(
        0,
        "With --hard-negatives: score at most N defect-free images per mining, a rotating random "
        "subset (0 = all).",
        low=0,
        panel=_S,
    )


@dataclass
class AugmentConfig:
    augment: str = opt(
        "light",
        "Augmentation: none, light, medium or heavy.",
        choices=("none", "light", "medium", "heavy"),
        panel=_A,
    )
    augment_minority: bool = opt(
        False, "Stronger augmentation for images with a rare class.", panel=_A
    )
    copy_paste: float = opt(
        0.0, "Probability of pasting rare-class defects onto an image.", low=0, high=1, panel=_A
    )
    multi_scale: float = opt(
        0.0,
        "Multi-scale training: each batch runs at a side drawn from (1 ± F) × the input size, "
        "in steps of 32 px (0 = off; e.g. 0.25).",
        low=0,
        high=0.75,
        panel=_A,
    )
    rotate90: bool = opt(
        True,
        "Allow 90° rotations (off where orientation matters).",
        panel=_A,
        flag="--rotate90/--no-rotate90",
    )


@dataclass
class OptimConfig:
    epochs: int = opt(20, "Epochs (with --time-budget: only the first estimate).", low=1, panel=_O)
    time_budget: float = opt(
        0.0,
        "Minutes the run may take (0 = off): the step count is fitted to it from measured "
        "throughput, so warm-up and cosine decay end on time, final validation included.",
        low=0,
        panel=_O,
    )
    batch_size: int = batch_size_option(_O)
    lr: float = opt(0.01, "Base learning rate.", low=0, low_open=True, panel=_O)
    optimizer: str = opt("sgd", "sgd or adamw.", choices=("sgd", "adamw"), panel=_O)
    momentum: float = opt(0.9, "SGD momentum.", low=0, high=1, panel=_O)
    weight_decay: float = opt(1e-4, "Weight decay.", low=0, panel=_O)
    schedule: str = opt(
        "cosine", "cosine or step, after the warm-up.", choices=("cosine", "step"), panel=_O
    )
    warmup_iters: int = opt(100, "Linear warm-up steps.", low=0, panel=_O)
    step_milestones: list[float] = opt(  # noqa: RUF009 (opt returns a field with a factory)
        [0.67, 0.89],
        "Step schedule: fractions of training where the lr drops 10x.",
        low=0,
        high=1,
        cli=False,
    )
    grad_clip: float = opt(10.0, "Gradient-norm clip (0 = off).", low=0, panel=_O)
    ema: float = opt(
        0.0,
        "Exponential moving average of the weights with this decay (e.g. 0.999; 0 = off): "
        "validated, and saved as best.pt.",
        low=0,
        high=1,
        high_open=True,
        panel=_O,
    )


@dataclass
class RunConfig:
    project: str = opt("runs/train", "Parent folder of runs.", panel=_R)
    name: str = opt("exp", "Run name; a taken name gets a number.", panel=_R)
    exist_ok: bool = opt(False, "Reuse an existing run folder.", panel=_R)
    seed: int = opt(0, "Random seed.", low=0, panel=_R)
    workers: int = workers_option(_R)
    device: str = device_option(_R)
    amp: bool | None = opt(
        None, "Mixed precision (default: on for CUDA).", panel=_R, flag="--amp/--no-amp"
    )
    channels_last: bool | None = opt(
        None, "Channels-last memory format (default: on for CUDA).", cli=False
    )
    eval_interval: int = opt(1, "Validate every N epochs.", low=1, panel=_R)
    select_metric: str = opt(
        "mean_class_ap50",
        "Validation metric choosing best.pt: "
        + ", ".join(SELECT_METRICS)
        + ", ap50_CLASS (one class's AP50), or last (the last validated epoch, where the "
        "schedule ends).",
        check=check_select_metric,
        allowed=", ".join(SELECT_METRICS) + ", ap50_<class> or last",
        panel=_R,
    )
    patience: int = opt(0, "Stop after N validations without gain (0 = off).", low=0, panel=_R)
    save_period: int = opt(
        0,
        "Also keep weights/epochN.pt every N epochs: the weights best.pt would hold then, with "
        "that epoch's validation metrics if it had one, to evaluate or pick later (0 = off).",
        low=0,
        panel=_R,
    )
    max_steps: int = opt(
        0, "Stop after N optimiser steps (0 = no limit; smoke tests).", low=0, panel=_R
    )


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)

    def cross_check(self) -> None:
        """Rules between options; raises ConfigError."""
        if self.model.weights == "coco":
            check_coco(self.model)
        check_patience(self.run)
        self.calibrate.cross_check()

    def runtime(self) -> RuntimeConfig:
        """The inference runtime of train-time validation (the run's own batch, workers, device)."""
        return RuntimeConfig(self.optim.batch_size, self.run.workers, self.run.device)
