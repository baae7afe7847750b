"""Commands that use a trained model: ``predict``, ``evaluate``, ``export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from defectdet.cli.app import FormatOpt, StrictOpt, _load, app, handle_errors
from defectdet.console import err, out

# ---------------------------------------------------------------------------- predict
_IN, _THR, _OUT, _RUN = "Input", "Thresholds", "Output", "Run"
WeightsOpt = Annotated[Path, typer.Option("--weights", "-w", help="Checkpoint (weights/best.pt).")]
ConfOpt = Annotated[
    float, typer.Option("--conf", help="Score threshold for every class.", rich_help_panel=_THR)
]
ClassConfOpt = Annotated[
    str | None,
    typer.Option(
        "--class-conf",
        help="Per-class thresholds overriding --conf, e.g. 'scratch=0.5,crack=0.15'.",
        rich_help_panel=_THR,
    ),
]
IouOpt = Annotated[
    float, typer.Option("--iou", help="IoU of class-wise NMS.", rich_help_panel=_THR)
]
BatchOpt = Annotated[
    int, typer.Option("--batch-size", help="Images per batch.", rich_help_panel=_RUN)
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        help="Processes decoding images ahead of the model (-1 = auto: none on a small "
        "CPU-only machine, where they would compete with the model for cores).",
        rich_help_panel=_RUN,
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto|cpu|cuda|cuda:N.", rich_help_panel=_RUN)
]
DetectorWeightsOpt = Annotated[
    Path,
    typer.Option(
        "--weights",
        "-w",
        help="Checkpoint (weights/best.pt); with --backend onnxruntime an exported .onnx file.",
    ),
]
BackendOpt = Annotated[str, typer.Option(help="torch or onnxruntime.", rich_help_panel=_RUN)]
HalfOpt = Annotated[
    bool, typer.Option("--half", help="fp16 inference (CUDA only).", rich_help_panel=_RUN)
]


@app.command()
@handle_errors
def predict(
    source: Annotated[
        str,
        typer.Argument(
            help="An image, a folder (searched recursively), a quoted glob ('parts/**/*.png') or "
            "a text file listing image paths (relative to its folder)."
        ),
    ],
    weights: DetectorWeightsOpt,
    backend: BackendOpt = "torch",
    conf: ConfOpt = 0.25,
    class_conf: ClassConfOpt = None,
    iou: IouOpt = 0.5,
    max_det: Annotated[
        int, typer.Option("--max-det", help="Boxes kept per image.", rich_help_panel=_THR)
    ] = 100,
    tile: Annotated[
        int,
        typer.Option(
            help="Tile large images: tiles of SIZE px of the original, each run at the model's "
            "resolution, boxes merged by NMS (0 = off: the whole image is resized).",
            rich_help_panel=_IN,
        ),
    ] = 0,
    tile_overlap: Annotated[
        float, typer.Option(help="Overlap between tiles (fraction).", rich_help_panel=_IN)
    ] = 0.2,
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
    batch_size: BatchOpt = 8,
    workers: WorkersOpt = -1,
    device: DeviceOpt = "auto",
    half: HalfOpt = False,
) -> None:
    """Detect defects in images, streaming boxes, scores and a verdict per image.

    Detect defects in images: predictions.csv (one row per box), images.csv (one row per
    image, verdict defect/ok), predictions.json (COCO results), written as it goes.

    [dim]Examples:
      defectdet predict parts/ --weights runs/train/exp/weights/best.pt
      defectdet predict 'line3/*.png' -w best.pt --class-conf crack=0.15 --save-images
      defectdet predict big.tif -w best.pt --tile 1024 --tile-overlap 0.25
      defectdet predict list.txt -w best.onnx --backend onnxruntime --json[/dim]
    """
    from defectdet.engine.predict import PredictOptions
    from defectdet.engine.predict import predict as run_predict

    opts = PredictOptions(
        weights=weights,
        backend=backend,
        out=out_dir,
        name=name,
        exist_ok=exist_ok,
        conf=conf,
        class_conf=class_conf,
        iou=iou,
        max_det=max_det,
        batch_size=batch_size,
        workers=workers,
        device=device,
        half=half,
        tile=tile,
        tile_overlap=tile_overlap,
        save_images=save_images,
        progress=not json_out,
    )
    summary = run_predict(source, opts)
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
    conf: ConfOpt = 0.25,
    class_conf: ClassConfOpt = None,
    iou: IouOpt = 0.5,
    plots: Annotated[
        Path | None,
        typer.Option(help="Folder for pr_curves.png and confusion_matrix.png."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write everything as JSON ('-' = stdout).")
    ] = None,
    batch_size: BatchOpt = 8,
    workers: WorkersOpt = -1,
    device: DeviceOpt = "auto",
    backend: BackendOpt = "torch",
    half: HalfOpt = False,
) -> None:
    """Score a checkpoint per class, per image and as a confusion matrix.

    Score a checkpoint per class (AP, AP50, precision, recall), per image (defect recall,
    false alarms, balanced accuracy next to plain accuracy) and as a confusion matrix.

    [dim]Examples:
      defectdet evaluate data/ -w runs/train/exp/weights/best.pt --plots eval/
      defectdet evaluate data/ -w best.onnx --backend onnxruntime --split test[/dim]
    """
    from defectdet.engine.report import (
        EvaluateOptions,
        evaluate_checkpoint,
        plot_evaluation,
        render_evaluation,
    )
    from defectdet.io import write_json

    catalog = _load(data, fmt, strict)
    opts = EvaluateOptions(
        weights=weights,
        split=split,
        conf=conf,
        class_conf=class_conf,
        iou=iou,
        batch_size=batch_size,
        workers=workers,
        device=device,
        backend=backend,
        half=half,
    )
    report = evaluate_checkpoint(catalog, opts, str(data))
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
        err.print(f"plots written to {', '.join(escape(str(p)) for p in paths)}")


# ---------------------------------------------------------------------------- export
@app.command()
@handle_errors
def export(
    weights: WeightsOpt,
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
        bool, typer.Option(help="Compare the export with PyTorch on a random batch.")
    ] = True,
) -> None:
    """Export a checkpoint to ONNX or TorchScript.

    Export a checkpoint to ONNX (network only, dynamic batch; use with predict --backend
    onnxruntime) or TorchScript (the whole detector).

    [dim]Example: defectdet export -w runs/train/exp/weights/best.pt --format onnx[/dim]
    """
    from defectdet.engine.export import export as run_export

    info = run_export(weights, to, out_path, overwrite=overwrite, opset=opset, check=check)
    out.print(
        f"wrote {escape(info['out'])} ({info['bytes'] / 1e6:.1f} MB, {to}, "
        f"image size {info['image_size']}, classes {escape(', '.join(info['classes']))})"
    )
    if info["max_abs_diff"]:
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in info["max_abs_diff"].items())
        out.print(f"largest difference from PyTorch: {diffs}")
