"""``defectdet train``: its options are generated from the option schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from defectdet.cli.app import app, handle_errors
from defectdet.cli.options import given, schema_options
from defectdet.config import TrainConfig
from defectdet.console import err
from defectdet.errors import ConfigError


@app.command()
@handle_errors
@schema_options(TrainConfig, skip=("path",))
def train(
    data: Annotated[Path | None, typer.Argument(help="Dataset (default: data/).")] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML config; CLI options override it.", rich_help_panel="Run"),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue a run folder (or its last.pt) exactly where it stopped, with its "
            "own options.",
            rich_help_panel="Run",
        ),
    ] = None,
    **options: Any,
) -> None:
    """Train a RetinaNet on DATA with focal loss and imbalance remedies.

    The default --preset auto picks a recipe for this machine (n on CPU, m on a GPU); options
    you give win over it. Writes runs/train/NAME: config.yaml (your options and the preset's,
    to repeat the run with --config), resolved.yaml (what the data decided:
    classes, image size, anchors, class weights), metrics.csv, weights/best.pt and last.pt,
    training.png. The best epoch is chosen by the mean of per-class AP50, so the rare class
    counts as much as the common one. Ctrl-C saves a resumable checkpoint. Every option can
    also be set in a YAML file (--config), under its section or at the top level, with the
    same name.

    [dim]Examples:
      defectdet train data/ --time-budget 30 --sampler repeat-factor --copy-paste 0.5
      defectdet train data/ --preset n --train-tile 320     # large images, small defects
      defectdet train data/ --loss focal --gamma 2 --sampler repeat-factor
      defectdet train data/ --class-weights effective --background-fraction 0.3
      torchrun --nproc_per_node 2 -m defectdet train data/ --device cuda
      defectdet train --resume runs/train/exp[/dim]
    """
    from defectdet.config import apply, config_names, load_config, validate
    from defectdet.engine.train.loop import Interrupted
    from defectdet.engine.train.loop import train as run_training

    chosen = given(options)
    try:
        if resume is not None:
            if chosen or data is not None or config is not None:
                raise ConfigError(
                    "--resume continues a run with its own saved options; drop "
                    + ", ".join(f"--{k.replace('_', '-')}" for k in chosen or ["DATA/--config"])
                )
            _report(run_training(resume=resume))
            return
        cfg = apply(load_config(config), {"path": str(data) if data else None, **chosen})
        _report(run_training(validate(cfg), given=config_names(config) | set(chosen)))
    except Interrupted as exc:
        err.print(f"[yellow]interrupted:[/] {escape(str(exc))}")
        raise typer.Exit(130) from None


def _report(run_dir: Path) -> None:
    """The run's report.html (rank 0 only under torchrun), kept current on every finish."""
    import os

    from defectdet.console import out
    from defectdet.engine.report.render import write_report

    if int(os.environ.get("RANK", "0")) == 0:
        out.print(f"report: {escape(str(write_report(run_dir, exist_ok=True)))}")
