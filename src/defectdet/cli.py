"""The ``defectdet`` command line: a thin layer of Typer commands that parse options and call
into the library. Every failure the tool can name is one message on stderr and a non-zero exit:

==  =====================================================
0   success
1   a failure the tool names (see the message)
2   unusable input data or options (``--strict`` problems too)
3   a checkpoint that cannot or must not be loaded
4   an output that would be overwritten
130 interrupted (Ctrl-C); resumable runs were saved first
==  =====================================================
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from defectdet import __version__
from defectdet.console import err, out, print_problems
from defectdet.errors import ConfigError, DefectdetError

F = TypeVar("F", bound=Callable[..., Any])
_default_showwarning = warnings.showwarning

app = typer.Typer(
    name="defectdet",
    help="Train and run object detectors on industrial defect images with imbalanced classes.\n\n"
    "Typical flow: [bold]analyze[/] your data, [bold]train[/] a RetinaNet with focal loss and "
    "imbalance remedies, [bold]evaluate[/] it per class, [bold]predict[/] on new images.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        out.print(f"defectdet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """defectdet command line."""
    warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The tool's own warnings as one plain line (no source location); others as usual."""
    from defectdet.console import warn
    from defectdet.data.dataset import BadImageWarning

    ours = issubclass(category, UserWarning) and "defectdet" in str(filename)
    if issubclass(category, BadImageWarning) or ours:
        warn(str(message))
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def handle_errors(fn: F) -> F:
    """Turn the tool's own errors into one clear message and its exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DefectdetError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


FormatOpt = Annotated[
    str, typer.Option("--format", "-f", help="Annotation format: auto, coco, voc, yolo or csv.")
]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Fail on any problem in the data instead of skipping it.")
]


def _load(data: Path, fmt: str, strict: bool, check_images: bool = True):
    from defectdet.data.formats import load_dataset

    catalog = load_dataset(data, fmt=fmt, strict=strict, check_images=check_images)
    print_problems(catalog.problems)
    return catalog


# ---------------------------------------------------------------------------- analyze
@app.command()
@handle_errors
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
) -> None:
    """Class-distribution report: instances and images per class, defect-free share, imbalance
    ratio, box sizes, splits, and what to do about it.

    [dim]Example: defectdet analyze data_samples --json report.json --plot report.png[/]
    """
    from defectdet.analysis import build_report, plot_report, render_report
    from defectdet.io import write_json

    catalog = _load(data, fmt, strict, check_images)
    report = build_report(catalog, repeat_threshold=repeat_threshold, beta=beta)
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
    """Generate a procedural, imbalanced defect dataset (COCO format): textured surfaces with
    scratches, spots, cracks and inclusions, boxes exact.

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
        cfg.classes = _parse_weights(classes, "--classes")
    summary = synthesize(out_dir, cfg, overwrite=overwrite)
    out.print(
        f"wrote {summary['images']} images ({summary['background_images']} defect-free) "
        f"and {summary['annotations']} boxes to {escape(str(out_dir))}"
    )
    for name, n in summary["per_class"].items():
        out.print(f"  {name}: {n}")


def _parse_weights(text: str, option: str) -> dict[str, float]:
    result: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            result[name.strip()] = float(value) if sep else 1.0
        except ValueError:
            msg = f"{option}: {value!r} is not a number (expected name=W,...)"
            raise ConfigError(msg) from None
    return result


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
    weights: Annotated[
        Path,
        typer.Option(
            "--weights",
            "-w",
            help="Checkpoint (weights/best.pt); with --backend onnxruntime an exported .onnx file.",
        ),
    ],
    backend: Annotated[
        str, typer.Option(help="torch or onnxruntime.", rich_help_panel=_RUN)
    ] = "torch",
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
    half: Annotated[
        bool,
        typer.Option("--half", help="fp16 inference (CUDA only).", rich_help_panel=_RUN),
    ] = False,
) -> None:
    """Detect defects in images: predictions.csv (one row per box), images.csv (one row per
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
    weights: WeightsOpt,
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
) -> None:
    """Score a checkpoint per class (AP, AP50, precision, recall), per image (defect recall,
    false alarms, balanced accuracy next to plain accuracy) and as a confusion matrix.

    [dim]Example: defectdet evaluate data/ -w runs/train/exp/weights/best.pt --plots eval/[/dim]
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
    """Export a checkpoint to ONNX (network only, dynamic batch; use with predict --backend
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
    """Does focal loss (or re-sampling, or class weights) help on YOUR data? Train each variant
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


def main() -> None:
    app(prog_name="defectdet")
