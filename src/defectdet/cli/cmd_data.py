"""Data commands: ``analyze``, ``synth``, ``convert``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from defectdet.cli.app import FormatOpt, NegativesOpt, StrictOpt, _load, app, handle_errors
from defectdet.cli.options import schema_options
from defectdet.config import ModelConfig, OptimConfig
from defectdet.config.values import parse_number_map
from defectdet.console import err, out
from defectdet.errors import ConfigError


# ---------------------------------------------------------------------------- analyze
@app.command()
@handle_errors
@schema_options(ModelConfig, OptimConfig, only=("preset", "time_budget"), panel="Recipe")
def analyze(
    data: Annotated[Path, typer.Argument(help="Dataset folder or annotation file.")] = Path("data"),
    fmt: FormatOpt = "auto",
    strict: StrictOpt = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the full report as JSON ('-' = stdout).")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG: instances per class, box sizes.")
    ] = None,
    repeat_threshold: Annotated[
        float | None,
        typer.Option(help="LVIS repeat-factor threshold t (default: chosen from the data)."),
    ] = None,
    beta: Annotated[
        float, typer.Option(help="Effective-number beta for suggested class weights.")
    ] = 0.999,
    check_images: Annotated[
        bool,
        typer.Option(help="Check that image files exist (off: analyse annotations alone)."),
    ] = True,
    negatives: NegativesOpt = None,
    **options: Any,
) -> None:
    """Class-distribution report of a dataset, and what to do about its imbalance.

    Instances and images per class, defect-free share, imbalance ratio, box sizes, splits,
    repeat factors and class weights to use, and plain-language advice that ends in one
    `defectdet train` command: the preset for this machine and --time-budget (or --preset),
    the input size it will use on this data, and the remedies the data calls for.

    [dim]Example: defectdet analyze data_samples --json report.json --plot report.png[/]
    """
    from defectdet.analysis import build_report, plot_report, render_report
    from defectdet.io import write_json

    catalog = _load(data, fmt, strict, check_images, negatives)
    budget, recipe = _recipe_preset(options.get("preset"), options.get("time_budget"))
    report = build_report(
        catalog,
        repeat_threshold=repeat_threshold,
        beta=beta,
        preset=recipe,
        source=str(data),
        time_budget=budget,
    )
    if json_path is not None and str(json_path) == "-":
        print(json.dumps(report, indent=2, default=str))
        return
    render_report(report, out)
    if json_path is not None:
        write_json(json_path, report)
        err.print(f"report written to {escape(str(json_path))}")
    if plot is not None:
        plot_report(report, plot)
        err.print(f"plot written to {escape(str(plot))}")


def _recipe_preset(preset: str | None, time_budget: float | None) -> tuple[float, str]:
    """The budget and the preset analyze's advice names: validated and resolved exactly as
    ``train`` resolves them (``auto``: what this machine would pick for that budget)."""
    import torch

    from defectdet.config import TrainConfig, apply, resolve_preset, validate

    cfg = validate(apply(TrainConfig(), {"preset": preset, "time_budget": time_budget}))
    cfg = resolve_preset(cfg, {"time_budget"}, cuda=torch.cuda.is_available())
    return cfg.optim.time_budget, cfg.model.preset


# ---------------------------------------------------------------------------- synth
@app.command()
@handle_errors
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to create (images/ + annotations/).")],
    images: Annotated[int, typer.Option("--images", "-n", help="Number of images.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    size: Annotated[int, typer.Option(help="Image width and height in pixels.")] = 128,
    background_fraction: Annotated[float, typer.Option(help="Share of defect-free images.")] = 0.6,
    classes: Annotated[
        str | None,
        typer.Option(help="Defect classes and relative frequencies, e.g. 'scratch=0.7,crack=0.3'."),
    ] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of images in the val split.")] = 0.2,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing generated set.")] = False,
) -> None:
    """Generate a procedural, imbalanced defect dataset (COCO format).

    Textured surfaces (brushed metal, fabric, tiles) with scratches, spots, cracks and
    inclusions; every box is exact.

    [dim]Example: defectdet synth data/ --images 1000 --background-fraction 0.8[/]
    """
    from defectdet.data.synth import SynthConfig, synthesize

    cfg = SynthConfig(
        images=images,
        width=size,
        height=size,
        seed=seed,
        background_fraction=background_fraction,
        val_fraction=val_fraction,
    )
    if classes:
        try:
            cfg.classes = parse_number_map(classes, "--classes", low=0, what="WEIGHT")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    summary = synthesize(out_dir, cfg, overwrite=overwrite)
    out.print(
        f"wrote {summary['images']} images ({summary['background_images']} defect-free) "
        f"and {summary['annotations']} boxes to {escape(str(out_dir))}"
    )
    for name, n in summary["per_class"].items():
        out.print(f"  {name}: {n}")


# ---------------------------------------------------------------------------- convert
@app.command()
@handle_errors
def convert(
    data: Annotated[Path, typer.Argument(help="Dataset folder or annotation file (any format).")],
    output: Annotated[Path, typer.Argument(help="COCO JSON file to write.")],
    fmt: FormatOpt = "auto",
    strict: StrictOpt = False,
    val_fraction: Annotated[
        float,
        typer.Option(help="Add a stratified train/val split when the data has none (0 = don't)."),
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed for the split.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Convert a dataset (COCO, VOC, YOLO or CSV) to one validated COCO JSON file.

    Image paths in the output are relative to the dataset root; put OUTPUT in that root (or its
    annotations/ folder) so that defectdet finds the images again.
    """
    from defectdet.data.split import stratified_split
    from defectdet.errors import OutputExistsError
    from defectdet.io import write_json

    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} exists; pass --overwrite to replace it")
    catalog = _load(data, fmt, strict)
    if val_fraction > 0 and not catalog.splits():
        _train_ids, val_ids = stratified_split(catalog, val_fraction, seed)
        catalog.images["split"] = (
            catalog.images["image_id"].isin(val_ids).map({True: "val", False: "train"})
        )
    write_json(output, catalog.to_coco())
    out.print(
        f"wrote {catalog.num_images} images, {len(catalog.boxes)} boxes, "
        f"{catalog.num_classes} classes to {escape(str(output))}"
    )
