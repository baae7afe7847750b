"""``defectdet compare``: imbalance remedies side by side. Every train option is accepted here
too (generated from the same schema) and applies to every variant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from defectdet.cli.app import app, handle_errors
from defectdet.cli.options import given, schema_options
from defectdet.config import TrainConfig
from defectdet.console import out
from defectdet.errors import ConfigError

_STUDY = "Study"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handle_errors
@schema_options(TrainConfig, skip=("path", "project", "name", "exist_ok"))
def compare(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="Dataset every variant trains on.")],
    runs: Annotated[
        str | None,
        typer.Option(
            "--runs",
            help="Variants, each 'key=value,...' over train options; "
            "several may follow one --runs.",
            rich_help_panel=_STUDY,
        ),
    ] = None,
    grid: Annotated[
        Path | None,
        typer.Option(help="YAML grid: base options, variants.", rich_help_panel=_STUDY),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Base YAML config for every variant.", rich_help_panel=_STUDY),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Train every variant once per seed (0,1,2 or 0-2) and add each variant's mean "
            "and min-max across seeds: per-class AP on a few rare boxes moves a lot between "
            "seeds, so one seed can crown the wrong remedy.",
            rich_help_panel=_STUDY,
        ),
    ] = None,
    far: Annotated[
        float,
        typer.Option(help="False-alarm rate for the defect-recall column.", rich_help_panel=_STUDY),
    ] = 0.05,
    at_recall: Annotated[
        float,
        typer.Option(
            help="Defect recall for the false-alarms column (image level). Not --target-recall, "
            "which every variant's calibration takes.",
            rich_help_panel=_STUDY,
        ),
    ] = 0.9,
    project: Annotated[
        str, typer.Option(help="Parent folder of studies.", rich_help_panel=_STUDY)
    ] = "runs/compare",
    name: Annotated[
        str,
        typer.Option(help="Study name (a folder; reused to resume).", rich_help_panel=_STUDY),
    ] = "study",
    **options: Any,
) -> None:
    """Compare imbalance remedies on your data: same budget, split and seed; one table.

    Does focal loss (or re-sampling, or class weights) help on YOUR data? Train each variant
    with the same budget, split and seed, evaluate each, and print one table: AP50 with all
    boxes pooled beside mean per-class AP50 (= COCO's mAP50), AP50 of the rarest class, defect
    recall at a fixed false-alarm rate, and training time. Writes compare.csv, compare.md and
    compare.png in PROJECT/NAME; a finished variant is not trained again, an interrupted one
    resumes.

    Train options given here apply to every variant (a variant's own keys win); every variant
    is checked before any trains. With --seeds each variant trains once per seed, and a table
    of each variant's mean and min-max over its seeds follows (also in compare-seeds.csv).

    [dim]Example:
      defectdet compare data/ --epochs 10 --runs "loss=ce" "loss=focal,gamma=2" \\
          "loss=focal,sampler=repeat-factor" "loss=focal,class_weights=effective"
      defectdet compare data/ --grid grid.yaml --seeds 0,1,2 --time-budget 10[/]
    """
    from defectdet.config import apply, config_names, load_config
    from defectdet.engine.compare.run import TablePoints, run_compare
    from defectdet.engine.compare.variants import load_grid, parse_seeds, parse_variant, with_seeds
    from defectdet.engine.report.render import write_report

    if not 0 < far < 1:
        raise ConfigError(f"--far must be between 0 and 1, got {far:g}")
    if not 0 < at_recall <= 1:
        raise ConfigError(f"--at-recall must be in (0, 1], got {at_recall:g}")
    cfg, names = load_config(config), config_names(config)
    variants = []
    if grid is not None:
        base_updates, variants = load_grid(grid)
        cfg = apply(cfg, base_updates, str(grid))
        names |= set(base_updates)
    texts = ([runs] if runs else []) + list(ctx.args)
    if ctx.args and not runs:
        raise ConfigError(f"unexpected arguments {' '.join(ctx.args)} (variants go after --runs)")
    variants += [parse_variant(t) for t in texts]
    chosen = given(options)
    if seeds is not None:
        if "seed" in chosen:
            raise ConfigError("give --seed or --seeds, not both")
        variants = with_seeds(variants, parse_seeds(seeds))
    cfg = apply(cfg, {"path": str(data), **chosen})
    study = Path(project) / name
    run_compare(cfg, variants, study, TablePoints(far, at_recall), names | set(chosen))
    out.print(f"report: {escape(str(write_report(study, exist_ok=True)))}")
