"""Commands that use a trained model: ``predict``, ``evaluate``, ``export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from defectdet.cli.app import FormatOpt, NegativesOpt, StrictOpt, _load, app, handle_errors
from defectdet.cli.options import given, schema_options
from defectdet.config import CalibrateRunConfig, PredictConfig
from defectdet.console import err, out

# ---------------------------------------------------------------------------- predict
_OUT = "Output"
GalleryOpt = Annotated[
    Path | None,
    typer.Option(
        help="Folder for contact sheets to review (PNG per kind and class) and gallery.csv.",
        rich_help_panel=_OUT,
    ),
]
GallerySizeOpt = Annotated[int, typer.Option(help="Tiles per contact sheet.", rich_help_panel=_OUT)]
DetectorWeightsOpt = Annotated[
    Path,
    typer.Option(
        "--weights",
        "-w",
        help="Checkpoint (weights/best.pt); with --backend onnxruntime an exported .onnx file.",
    ),
]


def _predict_config(options: dict[str, Any]):
    from defectdet.config import PredictConfig, apply, validate

    return validate(apply(PredictConfig(), given(options)))


@app.command()
@handle_errors
@schema_options(PredictConfig)
def predict(
    source: Annotated[
        str,
        typer.Argument(
            help="An image, a folder (searched recursively), a quoted glob ('parts/**/*.png') or "
            "a text file listing image paths (relative to its folder)."
        ),
    ],
    weights: DetectorWeightsOpt,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Output folder (default: runs/predict/NAME, numbered if taken).",
            rich_help_panel=_OUT,
        ),
    ] = None,
    name: Annotated[
        str, typer.Option(help="Run name under runs/predict.", rich_help_panel=_OUT)
    ] = "exp",
    exist_ok: Annotated[
        bool,
        typer.Option("--exist-ok", help="Replace results already in --out.", rich_help_panel=_OUT),
    ] = False,
    save_images: Annotated[
        bool,
        typer.Option(
            "--save-images",
            help="Write copies with boxes drawn to OUT/images/.",
            rich_help_panel=_OUT,
        ),
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print the summary as JSON on stdout.", rich_help_panel=_OUT),
    ] = False,
    gallery: GalleryOpt = None,
    gallery_size: GallerySizeOpt = 24,
    **options: Any,
) -> None:
    """Detect defects in images, streaming boxes, scores and a verdict per image.

    Detect defects in images: predictions.csv (one row per box at or above its threshold),
    images.csv (one row per image, verdict defect/ok), predictions.json (COCO results of every
    detection, for scoring), written as it goes. The thresholds and preprocessing are those of
    evaluate and of validation during training.

    [dim]Examples:
      defectdet predict parts/ --weights runs/train/exp/weights/best.pt
      defectdet predict 'line3/*.png' -w best.pt --class-conf crack=0.15 --save-images
      defectdet predict big.tif -w best.pt --tile 1024 --tile-overlap 0.25
      defectdet predict list.txt -w best.onnx --backend onnxruntime --json[/dim]
    """
    from defectdet.engine.predict.run import PredictOutput
    from defectdet.engine.predict.run import predict as run_predict

    output = PredictOutput(
        out_dir,
        name=name,
        exist_ok=exist_ok,
        save_images=save_images,
        progress=not json_out,
        gallery=gallery,
        gallery_size=gallery_size,
    )
    summary = run_predict(source, weights, _predict_config(options), output)
    if json_out:
        print(json.dumps(summary, indent=2))
        return
    skipped = f", {summary['skipped']} unreadable skipped" if summary["skipped"] else ""
    out.print(
        f"{summary['images']} images: {summary['defect_images']} with defects, "
        f"{summary['ok_images']} ok{skipped}; {summary['images_per_s']} images/s"
    )
    for cls, n in summary["boxes_per_class"].items():
        out.print(f"  {escape(cls)}: {n} boxes")
    out.print(f"results in {escape(summary['out'])}")


# ---------------------------------------------------------------------------- evaluate
@app.command()
@handle_errors
@schema_options(PredictConfig)
def evaluate(
    data: Annotated[Path, typer.Argument(help="Dataset folder or annotation file.")],
    weights: DetectorWeightsOpt,
    split: Annotated[
        str | None,
        typer.Option(
            help="Split to score, or 'all' (default: val or test when the data has one, else all)."
        ),
    ] = None,
    fmt: FormatOpt = "auto",
    strict: StrictOpt = False,
    negatives: NegativesOpt = None,
    plots: Annotated[
        Path | None,
        typer.Option(help="Folder for pr_curves.png and confusion_matrix.png."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write everything as JSON ('-' = stdout).")
    ] = None,
    gallery: GalleryOpt = None,
    gallery_size: GallerySizeOpt = 24,
    **options: Any,
) -> None:
    """Score a checkpoint per class, per image and as a confusion matrix.

    Score a checkpoint per class (AP, AP50, precision, recall), per image (defect recall,
    false alarms, balanced accuracy next to plain accuracy) and as a confusion matrix. The
    detections are exactly those predict gives for the same images and options.

    [dim]Examples:
      defectdet evaluate data/ -w runs/train/exp/weights/best.pt --plots eval/
      defectdet evaluate data/ -w best.onnx --backend onnxruntime --split test[/dim]
    """
    from defectdet.engine.evaluate.render import plot_evaluation, render_evaluation
    from defectdet.engine.evaluate.run import evaluate_checkpoint
    from defectdet.engine.gallery import check_gallery_folder
    from defectdet.engine.report.render import write_report
    from defectdet.io import write_json

    cfg = _predict_config(options)  # checked before the data is read
    catalog = _load(data, fmt, strict, negatives=negatives)
    if gallery is not None:
        check_gallery_folder(gallery, gallery_size)
    report = evaluate_checkpoint(catalog, weights, cfg, split, str(data), gallery, gallery_size)
    to_stdout = json_path is not None and str(json_path) == "-"
    if to_stdout:
        print(json.dumps(report, indent=2, default=str))
    else:
        render_evaluation(report, out)
    if json_path is not None and not to_stdout:
        write_json(json_path, report)
        err.print(f"report written to {escape(str(json_path))}")
    if plots is not None:
        paths = plot_evaluation(report, plots)
        write_json(plots / "evaluation.json", report)
        html = write_report(plots, exist_ok=True)  # the folder's own summary, kept current
        err.print(f"plots written to {', '.join(escape(str(p)) for p in paths)}; report {html}")
    if report["gallery"]:
        err.print(f"gallery: {len(report['gallery'])} contact sheets in {escape(str(gallery))}")


# ---------------------------------------------------------------------------- export
@app.command()
@handle_errors
def export(
    weights: Annotated[Path, typer.Option("--weights", "-w", help="Checkpoint (weights/best.pt).")],
    to: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript.")] = "onnx",
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Output file (default: next to the weights, .onnx or .torchscript.pt)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (≥ 17).")] = 17,
    check: Annotated[
        bool,
        typer.Option(
            help="Compare the export with PyTorch on sample images; refuse it (exit 1) when "
            "boxes differ by more than 0.5 px or scores by more than 1e-4."
        ),
    ] = True,
    images: Annotated[
        str | None,
        typer.Option(
            help="Sample images for the check (an image, folder, glob or list, as for predict; "
            "default: generated ones)."
        ),
    ] = None,
) -> None:
    """Export a checkpoint to ONNX or TorchScript.

    Export a checkpoint to ONNX (network only, dynamic batch; use with predict --backend
    onnxruntime) or TorchScript (the whole detector). The checkpoint's calibrated thresholds
    go along in the export's metadata, so a deployed model decides as the checkpoint did.

    [dim]Example: defectdet export -w runs/train/exp/weights/best.pt --format onnx[/dim]
    """
    from defectdet.engine.export import export as run_export

    info = run_export(
        weights, to, out_path, overwrite=overwrite, opset=opset, check=check, images=images
    )
    calibrated = "calibrated thresholds" if info["calibrated"] else "uncalibrated"
    out.print(
        f"wrote {escape(info['out'])} ({info['bytes'] / 1e6:.1f} MB, {to}, "
        f"image size {info['image_size']}, classes {escape(', '.join(info['classes']))}, "
        f"{calibrated})"
    )
    if info["max_abs_diff"]:
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in info["max_abs_diff"].items())
        out.print(f"largest difference from PyTorch: {diffs}")


# ---------------------------------------------------------------------------- calibrate
@app.command()
@handle_errors
@schema_options(CalibrateRunConfig)
def calibrate(
    data: Annotated[Path, typer.Argument(help="Labelled dataset to choose the thresholds on.")],
    weights: Annotated[
        Path, typer.Option("--weights", "-w", help="Checkpoint to calibrate (weights/best.pt).")
    ],
    split: Annotated[
        str | None,
        typer.Option(help="Split to calibrate on, or 'all' (default: val or test, else all)."),
    ] = None,
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Checkpoint to write (default: beside the weights, NAME-calibrated.pt, "
            "numbered if taken; never overwritten).",
        ),
    ] = None,
    fmt: FormatOpt = "auto",
    strict: StrictOpt = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the operating point as JSON on stdout.")
    ] = False,
    **options: Any,
) -> None:
    """Choose per-class score thresholds on a labelled split for what the line needs.

    Objectives: the maximum F1 per class (default); --target-recall R (or crack=0.99,...) per
    class; --level image --target-recall R, the share of defective parts caught; or
    --max-false-alarms F, the share of good parts flagged. Every threshold is stored with its
    evidence (examples, recall with a 95% interval, precision, false alarms on good parts) in a
    new checkpoint, which predict, evaluate and export then use by default.

    [dim]Examples:
      defectdet calibrate data/ -w runs/train/exp/weights/best.pt --target-recall crack=0.95
      defectdet calibrate data/ -w best.pt --max-false-alarms 0.02 --out line3.pt[/dim]
    """
    from defectdet.config import apply, validate
    from defectdet.engine.calibrate.render import render_operating_point
    from defectdet.engine.calibrate.run import calibrate_checkpoint

    cfg = validate(apply(CalibrateRunConfig(), given(options)))  # before the data is read
    catalog = _load(data, fmt, strict)
    op, written = calibrate_checkpoint(catalog, weights, cfg, split, out_path)
    if json_out:
        print(json.dumps({"checkpoint": str(written), **op.to_dict()}, indent=2))
        return
    render_operating_point(op, out)
    out.print(f"wrote {escape(str(written))}")


# ---------------------------------------------------------------------------- report
@app.command()
@handle_errors
def report(
    path: Annotated[
        Path,
        typer.Argument(
            help="A train run folder, an evaluate --plots folder or a compare study folder."
        ),
    ],
    exist_ok: Annotated[
        bool, typer.Option("--exist-ok", help="Replace an existing report.html.")
    ] = False,
) -> None:
    """Write one self-contained HTML report (PATH/report.html) to share with anyone.

    Configuration and data, training curves, the per-class table at the operating point with
    intervals, PR curves, confusion matrix, image-level ROC, galleries, or a compare study's
    tables: one file, figures embedded, nothing fetched, readable offline, on a phone and in
    print. train, evaluate --plots and compare write it automatically.

    [dim]Example: defectdet report runs/train/exp[/dim]
    """
    from defectdet.engine.report.render import write_report

    written = write_report(path, exist_ok=exist_ok)
    out.print(f"wrote {escape(str(written))}")
