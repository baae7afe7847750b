"""``defectdet compare``: imbalance remedies side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from defectdet.cli.app import app, handle_errors
from defectdet.cli.cmd_train import _parse_levels
from defectdet.errors import ConfigError


# ---------------------------------------------------------------------------- compare
@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handle_errors
def compare(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="Dataset every variant trains on.")],
    runs: Annotated[
        str | None,
        typer.Option(
            "--runs",
            help="Variants, each 'key=value,...' over train options; "
            "several may follow one --runs.",
        ),
    ] = None,
    grid: Annotated[Path | None, typer.Option(help="YAML grid: base options, variants.")] = None,
    config: Annotated[Path | None, typer.Option(help="Base YAML config for every variant.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per variant.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Model input size.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone for every variant.")] = None,
    fpn_channels: Annotated[int | None, typer.Option(help="FPN/head width.")] = None,
    head_convs: Annotated[int | None, typer.Option(help="Convs per head branch.")] = None,
    levels: Annotated[str | None, typer.Option(help="Pyramid levels, e.g. 3-5.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Base learning rate.")] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader workers.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed shared by all variants.")] = None,
    device: Annotated[str | None, typer.Option(help="auto|cpu|cuda|cuda:N.")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Val share if no split.")] = None,
    far: Annotated[
        float, typer.Option(help="False-alarm rate for the defect-recall column.")
    ] = 0.05,
    project: Annotated[str, typer.Option(help="Parent folder of studies.")] = "runs/compare",
    name: Annotated[str, typer.Option(help="Study name (a folder; reused to resume).")] = "study",
) -> None:
    """Compare imbalance remedies on your data: same budget, split and seed; one table.

    Does focal loss (or re-sampling, or class weights) help on YOUR data? Train each variant
    with the same budget, split and seed, evaluate each, and print one table: mAP50, mean
    per-class AP50, AP50 of the rarest class, defect recall at a fixed false-alarm rate, and
    training time. Writes compare.csv, compare.md and compare.png in PROJECT/NAME; a finished
    variant is not trained again, an interrupted one resumes.

    [dim]Example:
      defectdet compare data/ --epochs 10 --runs "loss=ce" "loss=focal,gamma=2" \\
          "loss=focal,sampler=repeat-factor" "loss=focal,class_weights=effective"[/]
    """
    from defectdet.config import load_config, override
    from defectdet.engine.compare import load_grid, parse_variant, run_compare

    cfg = load_config(config)
    variants = []
    if grid is not None:
        base_updates, variants = load_grid(grid)
        cfg = override(cfg, base_updates)
    texts = ([runs] if runs else []) + list(ctx.args)
    if ctx.args and not runs:
        raise ConfigError(f"unexpected arguments {' '.join(ctx.args)} (variants go after --runs)")
    variants += [parse_variant(t) for t in texts]
    lo, hi = _parse_levels(levels) if levels else (None, None)
    cfg = override(
        cfg,
        {
            "data.path": str(data),
            "optim.epochs": epochs,
            "model.image_size": image_size,
            "model.backbone": backbone,
            "model.fpn_channels": fpn_channels,
            "model.head_convs": head_convs,
            "model.min_level": lo,
            "model.max_level": hi,
            "optim.batch_size": batch_size,
            "optim.lr": lr,
            "run.workers": workers,
            "run.seed": seed,
            "run.device": device,
            "data.val_fraction": val_fraction,
        },
    )
    run_compare(cfg, variants, Path(project) / name, far)
