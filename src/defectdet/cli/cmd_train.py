"""``defectdet train``: every option maps onto one key of the run's config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from defectdet.cli.app import app, handle_errors
from defectdet.console import err
from defectdet.errors import ConfigError

# ---------------------------------------------------------------------------- train
_D, _M, _L, _S, _A, _O, _R = (
    "Data",
    "Model",
    "Loss",
    "Sampling (imbalance)",
    "Augmentation",
    "Optimisation",
    "Run",
)


def _opt(help: str, panel: str, *names: str) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=False)


@app.command()
@handle_errors
def train(
    data: Annotated[Path | None, typer.Argument(help="Dataset (default: data/).")] = None,
    config: Annotated[
        Path | None, _opt("YAML config; CLI options override it.", _R, "--config")
    ] = None,
    resume: Annotated[
        Path | None,
        _opt("Continue a run folder (or its last.pt) exactly where it stopped.", _R, "--resume"),
    ] = None,
    fmt: Annotated[
        str | None, _opt("Annotation format (auto|coco|voc|yolo|csv).", _D, "--format")
    ] = None,
    strict: Annotated[bool | None, _opt("Fail on any data problem.", _D, "--strict")] = None,
    val_fraction: Annotated[
        float | None, _opt("Val share when the data has no val split [0.2].", _D, "--val-fraction")
    ] = None,
    backbone: Annotated[
        str | None,
        _opt(
            "resnet18|resnet34|resnet50|resnet101|mobilenet_v3_large [resnet18].", _M, "--backbone"
        ),
    ] = None,
    head: Annotated[
        str | None, _opt("v1, or v2 (GroupNorm head, GIoU loss) [v1].", _M, "--head")
    ] = None,
    head_convs: Annotated[
        int | None, _opt("Convs per head branch [4]; fewer = faster.", _M, "--head-convs")
    ] = None,
    fpn_channels: Annotated[
        int | None,
        _opt("FPN/head width [256]; 64-128 is much faster on CPU.", _M, "--fpn-channels"),
    ] = None,
    levels: Annotated[
        str | None,
        _opt("Pyramid levels, e.g. 3-7 (default) or 3-5 for small images.", _M, "--levels"),
    ] = None,
    image_size: Annotated[
        int | None, _opt("Longest side fed to the model [from the data].", _M, "--image-size")
    ] = None,
    anchors: Annotated[
        str | None, _opt("default, or auto (fitted to your boxes).", _M, "--anchors")
    ] = None,
    weights: Annotated[
        str | None, _opt("Start from: a defectdet checkpoint PATH, or coco.", _M, "--weights")
    ] = None,
    backbone_weights: Annotated[
        str | None, _opt("none|imagenet|PATH [none].", _M, "--backbone-weights")
    ] = None,
    loss: Annotated[
        str | None, _opt("focal or ce (plain sigmoid cross-entropy) [focal].", _L, "--loss")
    ] = None,
    gamma: Annotated[
        float | None, _opt("Focal γ ≥ 0 [2]; 0 = α-balanced cross-entropy.", _L, "--gamma")
    ] = None,
    alpha: Annotated[
        float | None, _opt("Focal α, weight of positives [0.25]; < 0 disables.", _L, "--alpha")
    ] = None,
    class_weights: Annotated[
        str | None,
        _opt("none|inverse|sqrt-inverse|effective[:BETA]|name=W,...", _L, "--class-weights"),
    ] = None,
    normalizer: Annotated[
        str | None,
        _opt(
            "Loss divided by foreground anchors of the batch "
            "(batch), an EMA (ema) or per image (image).",
            _L,
            "--normalizer",
        ),
    ] = None,
    sampler: Annotated[
        str | None, _opt("none|repeat-factor|class-aware [none].", _S, "--sampler")
    ] = None,
    repeat_threshold: Annotated[
        float | None, _opt("LVIS repeat-factor threshold t [0.1].", _S, "--repeat-threshold")
    ] = None,
    background_fraction: Annotated[
        float | None,
        _opt(
            "Share of defect-free images used each epoch (they take turns) [1].",
            _S,
            "--background-fraction",
        ),
    ] = None,
    undersample_majority: Annotated[
        float | None,
        _opt("Share of majority-only images used each epoch [1].", _S, "--undersample-majority"),
    ] = None,
    augment: Annotated[
        str | None, _opt("none|light|medium|heavy [light].", _A, "--augment")
    ] = None,
    augment_minority: Annotated[
        bool | None,
        _opt("Stronger augmentation for images with a rare class.", _A, "--augment-minority"),
    ] = None,
    copy_paste: Annotated[
        float | None,
        _opt("Probability of pasting rare-class defects onto an image [0].", _A, "--copy-paste"),
    ] = None,
    rotate90: Annotated[
        bool | None, _opt("Allow 90° rotations [on].", _A, "--rotate90/--no-rotate90")
    ] = None,
    epochs: Annotated[int | None, _opt("Epochs [20].", _O, "--epochs")] = None,
    batch_size: Annotated[
        int | None, _opt("Images per step per process [8].", _O, "--batch-size")
    ] = None,
    lr: Annotated[float | None, _opt("Base learning rate [0.01].", _O, "--lr")] = None,
    optimizer: Annotated[str | None, _opt("sgd|adamw [sgd].", _O, "--optimizer")] = None,
    schedule: Annotated[
        str | None, _opt("cosine|step, after warm-up [cosine].", _O, "--schedule")
    ] = None,
    warmup_iters: Annotated[
        int | None, _opt("Linear warm-up steps [100].", _O, "--warmup-iters")
    ] = None,
    weight_decay: Annotated[
        float | None, _opt("Weight decay [1e-4].", _O, "--weight-decay")
    ] = None,
    grad_clip: Annotated[
        float | None, _opt("Gradient-norm clip, 0 = off [10].", _O, "--grad-clip")
    ] = None,
    project: Annotated[
        str | None, _opt("Parent folder of runs [runs/train].", _R, "--project")
    ] = None,
    name: Annotated[
        str | None, _opt("Run name [exp]; taken names get a number.", _R, "--name")
    ] = None,
    exist_ok: Annotated[
        bool | None, _opt("Reuse an existing run folder.", _R, "--exist-ok")
    ] = None,
    seed: Annotated[int | None, _opt("Random seed [0].", _R, "--seed")] = None,
    workers: Annotated[
        int | None, _opt("DataLoader worker processes [-1 = auto].", _R, "--workers")
    ] = None,
    device: Annotated[str | None, _opt("auto|cpu|cuda|cuda:N [auto].", _R, "--device")] = None,
    amp: Annotated[
        bool | None, _opt("Mixed precision [on for CUDA].", _R, "--amp/--no-amp")
    ] = None,
    eval_interval: Annotated[
        int | None, _opt("Validate every N epochs [1].", _R, "--eval-interval")
    ] = None,
    select_metric: Annotated[
        str | None,
        _opt(
            "Metric choosing best.pt [mean_class_ap50]: map, map50, defect_recall...",
            _R,
            "--select-metric",
        ),
    ] = None,
    patience: Annotated[
        int | None, _opt("Stop after N evaluations without gain [0 = off].", _R, "--patience")
    ] = None,
    conf: Annotated[
        float | None, _opt("Score threshold for image verdicts [0.3].", _R, "--conf")
    ] = None,
    max_steps: Annotated[
        int | None, _opt("Stop after N steps (smoke tests).", _R, "--max-steps")
    ] = None,
) -> None:
    """Train a RetinaNet on DATA with focal loss and imbalance remedies.

    Writes runs/train/NAME: config.yaml, metrics.csv, weights/best.pt and last.pt,
    training.png. The best epoch is chosen by the mean of per-class AP50, so the rare class
    counts as much as the common one. Ctrl-C saves a resumable checkpoint.

    [dim]Examples:
      defectdet train data/ --loss focal --gamma 2 --sampler repeat-factor
      defectdet train data/ --class-weights effective --background-fraction 0.3
      torchrun --nproc_per_node 2 -m defectdet train data/ --device cuda
      defectdet train --resume runs/train/exp[/dim]
    """
    from defectdet.config import load_config, override
    from defectdet.engine.train import Interrupted
    from defectdet.engine.train import train as run_training

    cfg = load_config(config)
    min_level = max_level = None
    if levels is not None:
        min_level, max_level = _parse_levels(levels)
    cfg = override(
        cfg,
        {
            "data.path": str(data) if data is not None else None,
            "data.format": fmt,
            "data.strict": strict,
            "data.val_fraction": val_fraction,
            "model.backbone": backbone,
            "model.head": head,
            "model.head_convs": head_convs,
            "model.fpn_channels": fpn_channels,
            "model.min_level": min_level,
            "model.max_level": max_level,
            "model.image_size": image_size,
            "model.anchors": anchors,
            "model.weights": weights,
            "model.backbone_weights": backbone_weights,
            "loss.loss": loss,
            "loss.gamma": gamma,
            "loss.alpha": alpha,
            "loss.class_weights": class_weights,
            "loss.normalizer": normalizer,
            "sampler.sampler": sampler,
            "sampler.repeat_threshold": repeat_threshold,
            "sampler.background_fraction": background_fraction,
            "sampler.undersample_majority": undersample_majority,
            "augment.preset": augment,
            "augment.minority": augment_minority,
            "augment.copy_paste": copy_paste,
            "augment.rotate90": rotate90,
            "optim.epochs": epochs,
            "optim.batch_size": batch_size,
            "optim.lr": lr,
            "optim.optimizer": optimizer,
            "optim.schedule": schedule,
            "optim.warmup_iters": warmup_iters,
            "optim.weight_decay": weight_decay,
            "optim.grad_clip": grad_clip,
            "run.project": project,
            "run.name": name,
            "run.exist_ok": exist_ok,
            "run.seed": seed,
            "run.workers": workers,
            "run.device": device,
            "run.amp": amp,
            "run.eval_interval": eval_interval,
            "run.select_metric": select_metric,
            "run.patience": patience,
            "run.conf": conf,
            "run.max_steps": max_steps,
        },
    )
    _check_train_options(cfg)
    try:
        run_training(cfg, resume=resume)
    except Interrupted as exc:
        err.print(f"[yellow]interrupted:[/] {escape(str(exc))}")
        raise typer.Exit(130) from None


def _parse_levels(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        return int(lo), int(hi if sep else lo)
    except ValueError:
        raise ConfigError(f"--levels: expected e.g. 3-7, got {text!r}") from None


def _check_train_options(cfg) -> None:
    """Range checks the type system cannot express, with the option's name in the message."""
    checks = [
        (cfg.loss.gamma >= 0, "--gamma must be ≥ 0"),
        (cfg.optim.epochs >= 1, "--epochs must be ≥ 1"),
        (cfg.model.image_size >= 0, "--image-size must be ≥ 0 (0 = from the data)"),
        (cfg.optim.batch_size >= 1, "--batch-size must be ≥ 1"),
        (cfg.run.workers >= -1, "--workers must be ≥ 0 (or -1 for auto)"),
        (0 <= cfg.augment.copy_paste <= 1, "--copy-paste must be between 0 and 1"),
        (0 < cfg.sampler.background_fraction <= 1, "--background-fraction must be in (0, 1]"),
        (0 < cfg.sampler.undersample_majority <= 1, "--undersample-majority must be in (0, 1]"),
        (0 < cfg.data.val_fraction < 1, "--val-fraction must be between 0 and 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
