"""What a report shows, read from the folder it describes: a training run (``config.yaml``,
``resolved.yaml``, ``metrics.csv``, ``weights/best.pt``), an ``evaluate`` output folder
(``evaluation.json``, written by ``evaluate --plots``) or a ``compare`` study (``compare.csv``).

Each reader returns a plain context for the template: tables as rows of :class:`Cell` (the shown
text and the exact value behind it, so a test can check the report against the files it came
from), figures as matplotlib figures, and notes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from defectdet.config import load_yaml
from defectdet.errors import DataError


@dataclass
class Cell:
    text: str
    value: Any = None  # the exact number behind ``text`` (None for labels)
    best: bool = False


@dataclass
class Section:
    """One part of the report: a title, one sentence on how to read it, then content."""

    title: str
    how_to_read: str
    tables: list[tuple[str, list[str], list[list[Cell]]]] = field(default_factory=list)
    figures: list[tuple[str, Any]] = field(default_factory=list)  # (caption, Figure | PNG bytes)
    text: list[str] = field(default_factory=list)
    code: str = ""


def fmt(value: Any, pct: bool = False) -> Cell:
    """A number as a cell: 3 decimals (or a percentage), ``-`` for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Cell("-", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Cell(str(value), None)
    text = f"{value:.1%}" if pct else (f"{value:.3f}" if isinstance(value, float) else str(value))
    return Cell(text, value)


def label(text: Any) -> Cell:
    return Cell(str(text))


def kind_of(path: Path) -> str:
    """``train``, ``evaluate`` or ``compare``, from what the folder holds."""
    if (path / "metrics.csv").is_file() and (path / "config.yaml").is_file():
        return "train"
    if (path / "evaluation.json").is_file():
        return "evaluate"
    if (path / "compare.csv").is_file():
        return "compare"
    raise DataError(
        f"{path}: not a train run (config.yaml + metrics.csv), an evaluate --plots folder "
        "(evaluation.json) or a compare study (compare.csv)"
    )


# ---------------------------------------------------------------------------- evaluate
def metrics_sections(report: dict, galleries: list[Path] = ()) -> list[Section]:
    """Per-class table, image level, PR curves, thresholds, ROC, confusion matrix, galleries,
    from an evaluate report (``evaluation.json``) or a checkpoint's metrics."""
    from defectdet.engine.evaluate.render import CLASS_COLUMNS, SUMMARY_COLUMNS, evaluation_figures

    m = report["metrics"]
    figures = evaluation_figures(report)
    per_class = Section(
        "Per class at the thresholds",
        "Each row is one defect class: AP50 ranks the detector over all thresholds; recall "
        "(with its 95% interval), precision and false alarms per image are what the line gets at "
        "the threshold shown.",
    )
    head = list(CLASS_COLUMNS)
    rows = []
    for c in m["classes"]:
        low, high = c.get("recall_low"), c.get("recall_high")
        interval = "-" if low is None else f"{low:.0%}–{high:.0%}"
        rows.append(
            [
                label(c["name"]),
                fmt(c["instances"]),
                fmt(c["ap"]),
                fmt(c["ap50"]),
                fmt(c["threshold"]),
                fmt(c["recall"]),
                label(interval),
                fmt(c["precision"]),
                fmt(c.get("false_alarms_per_image")),
            ]
        )
    summary = [[fmt(m.get("pooled_ap50")), fmt(m["mean_class_ap50"]), fmt(m["map"])]]
    per_class.tables = [
        ("per class", head, rows),
        ("summary", list(SUMMARY_COLUMNS), summary),
    ]
    source = report.get("threshold_source", "")
    if source:
        per_class.text.append(f"Thresholds: {source}.")
    il = m["image_level"]
    image = Section(
        "Image level: defect vs ok",
        "A part is flagged when any box passes its class's threshold; compare accuracy with the "
        'always-"ok" line to see whether the detector earns its keep.',
    )
    head = [
        "defect recall",
        "false-alarm rate on good parts",
        "AUROC",
        "balanced accuracy",
        "accuracy",
        'always-"ok" accuracy',
    ]
    keys = [
        "defect_recall",
        "false_alarm_rate",
        "auroc",
        "balanced_accuracy",
        "accuracy",
        "always_ok_accuracy",
    ]
    image.tables = [("image level", head, [[fmt(il[k], k != "auroc") for k in keys]])]
    image.figures = [
        ("ROC of the best box score per image, operating point marked", figures["roc"])
    ]
    for folder, n in (report.get("negatives") or {}).items():
        image.text.append(
            f"Good parts in {folder}: {n['flagged']} of {n['images']} flagged "
            f"({fmt(n['false_alarm_rate'], True).text})."
        )
    curves = Section(
        "Precision-recall and thresholds",
        "Left: precision against recall per class (the area is AP50); right: recall and "
        "precision against the threshold, with the operating point as a vertical line.",
        figures=[
            ("precision-recall per class", figures["pr_curves"]),
            ("recall and precision against the threshold", figures["thresholds"]),
        ],
    )
    confusion = Section(
        "Confusion matrix",
        "Rows are the truth, columns the prediction at the thresholds; the background column "
        "counts missed defects and the background row false alarms.",
        figures=[("confusion matrix", figures["confusion_matrix"])],
    )
    sections = [per_class, image, curves, confusion]
    if galleries:
        sections.append(
            Section(
                "Galleries",
                "Crops worth a look: ground truth thin and green, the prediction thick in its "
                "class colour; gallery.csv lists every tile.",
                figures=[(p.stem.replace("_", " "), p.read_bytes()) for p in galleries],
            )
        )
    return sections


def evaluate_context(path: Path) -> dict:
    report = json.loads((path / "evaluation.json").read_text(encoding="utf-8"))
    galleries = [Path(p) for p in report.get("gallery", []) if Path(p).is_file()]
    title = f"evaluate {Path(report['weights']).name} on {report['data']} ({report['split']})"
    sections = metrics_sections(report, galleries)
    if report.get("promise"):
        sections.append(promise_section(report))
    return {"title": title, "sections": sections}


def promise_section(report: dict) -> Section:
    """The calibrated rates against those measured on the evaluated split."""
    from defectdet.engine.evaluate.render import PROMISE_COLUMNS, promise_rows, promise_title

    section = Section(
        "Calibrated thresholds on this data",
        "Each rate calibration measured when it chose the thresholds, beside the same rate "
        "here; 'worse' means beyond chance (Fisher's exact test, 5 %): the scores have shifted, "
        "so calibrate on data like this.",
    )
    rows = []
    for text, c in zip(promise_rows(report), report["promise"], strict=True):
        values = (c["threshold"], c["promised"], c["rate"], c["p_value"])
        numbers = [Cell(t, v) for t, v in zip(text[1:5], values, strict=True)]
        rows.append([label(text[0]), *numbers, label(text[5])])
    section.text = [promise_title(report)]
    section.tables = [("calibrated thresholds", list(PROMISE_COLUMNS), rows)]
    return section


# ---------------------------------------------------------------------------- train
def train_context(path: Path) -> dict:
    """A training run: configuration, data, curves, the best epoch's metrics at the operating
    point."""
    from defectdet.engine.train.history import history_figure

    config_text = (path / "config.yaml").read_text(encoding="utf-8")
    resolved = load_yaml(path / "resolved.yaml") if (path / "resolved.yaml").is_file() else {}
    spec = resolved.get("model_spec", {})
    classes = list(spec.get("class_names", []))
    history = pd.read_csv(path / "metrics.csv")
    run = Section(
        "Configuration",
        "The options this run was given (config.yaml, reusable with --config) and what the data "
        "decided (resolved.yaml).",
        code=config_text,
    )
    run.text.append(
        f"Classes {', '.join(classes) or '-'}; input {spec.get('image_size', '-')} px; anchors "
        f"{spec.get('anchor_sizes') or 'torchvision defaults'}."
    )
    sections = [run, *data_sections(load_yaml(path / "config.yaml"))]
    curves = Section(
        "Training curves",
        "Losses should fall; the validation lines show whether the rare classes follow the "
        "common one (each dotted line is one class's AP50).",
        figures=[
            ("losses, learning rate and validation per epoch", history_figure(history, classes))
        ],
    )
    shown = [
        c
        for c in (
            "epoch",
            "train_loss",
            "pooled_ap50",
            "mean_class_ap50",
            "defect_recall",
            "false_alarm_rate",
            "mined_false_alarm_rate",
        )
        if c in history
    ]
    shown += [c for c in history.columns if c.startswith("ap50_")]
    rows = [[fmt(_plain(r[c])) for c in shown] for _, r in history.iterrows()]
    curves.tables = [("metrics.csv", shown, rows)]
    sections.append(curves)
    best = path / "weights" / "best.pt"
    if best.is_file():
        from defectdet.model import load_checkpoint

        ckpt = load_checkpoint(best)
        if ckpt.get("metrics"):
            report = {
                "metrics": ckpt["metrics"],
                "classes": classes,
                "pr_curves": ckpt["metrics"].get("pr_curves") or {"recall": [], "precision": {}},
                "threshold_source": "the validation threshold of best.pt's epoch",
            }
            sections += metrics_sections(report)
        if ckpt.get("operating_point"):
            sections.insert(
                len(sections) - 4 if ckpt.get("metrics") else len(sections),
                operating_point_section(ckpt["operating_point"]),
            )
    return {"title": f"training run {path.name}", "sections": sections}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def operating_point_section(op: dict) -> Section:
    section = Section(
        "Operating point",
        f"Thresholds chosen for '{op['objective']}' on split {op['split']}; the interval says how "
        "far the recall on new parts may fall from what the split showed.",
    )
    from defectdet.engine.calibrate.render import COLUMNS

    head = list(COLUMNS)
    rows = []
    for e in [*op["classes"], op["image"]]:
        low = e.get("recall_low")
        interval = "-" if low is None else f"{low:.1%}–{e['recall_high']:.1%}"
        rows.append(
            [
                label(e["name"]),
                fmt(e["threshold"]),
                fmt(e["examples"]),
                fmt(e["found"]),
                fmt(e["recall"], True),
                label(interval),
                fmt(e["precision"], True),
                fmt(e["false_alarm_rate"], True),
            ]
        )
    section.tables = [("operating point", head, rows)]
    section.text = [f"Note: {n}" for n in op.get("notes", [])]
    return section


def data_sections(config: dict) -> list[Section]:
    """The class distribution of the run's data (when it can still be read)."""
    from defectdet.analysis import build_report
    from defectdet.analysis.plots import report_figure
    from defectdet.config import from_dict, upgrade
    from defectdet.config.options import TrainConfig
    from defectdet.data.formats import load_dataset
    from defectdet.errors import DefectdetError

    section = Section(
        "Data",
        "How lopsided the data is: instances and images per class, and how many parts show no "
        "defect at all.",
    )
    try:
        cfg = from_dict(TrainConfig, upgrade(config))
        catalog = load_dataset(cfg.data.path, cfg.data.format, negatives=cfg.data.negatives)
    except DefectdetError as exc:
        section.text.append(f"The data could not be read again here ({exc}).")
        return [section]
    report = build_report(catalog)
    head = ["class", "instances", "images", "% instances", "repeat factor", "class weight"]
    rows = [
        [
            label(c["name"]),
            fmt(c["instances"]),
            fmt(c["images"]),
            fmt(c["instance_share"], True),
            fmt(c["repeat_factor"]),
            fmt(c["class_weight"]),
        ]
        for c in report["classes"]
    ]
    section.tables = [("classes", head, rows)]
    paradox = report["background_share"]
    section.text = [
        f"{report['num_images']} images, {report['num_background_images']} without defects "
        f"({paradox:.1%}): a model that always answers 'no defect' scores {paradox:.1%} image "
        "accuracy here, so judge models by per-class AP and defect recall, not accuracy."
    ]
    section.figures = [("instances per class and box sizes", report_figure(report))]
    return [section]


# ---------------------------------------------------------------------------- compare
def compare_context(path: Path) -> dict:
    from defectdet.engine.compare.table import (
        COLUMNS,
        LOWER_IS_BETTER,
        TablePoints,
        compare_figure,
        seed_verdict,
        seed_views,
    )

    table = pd.read_csv(path / "compare.csv")
    points = TablePoints()
    variants = Section(
        "Variants",
        "Each row trained with the same budget, split and seed; the best value of each score is "
        "marked (for false alarms, the lowest).",
        figures=[("main scores per variant", compare_figure(table, points))],
    )
    variants.tables = [("compare.csv", COLUMNS, _marked_rows(table, COLUMNS, LOWER_IS_BETTER))]
    per_class_cols = ["variant", *[c for c in table.columns if c.startswith("ap50_")], "map"]
    per_class = Section(
        "AP50 per class",
        "The rare classes are where remedies differ: read each column against the variant that "
        "did nothing special.",
    )
    per_class.tables = [("per class", per_class_cols, _marked_rows(table, per_class_cols, ()))]
    sections = [variants, per_class]
    views = seed_views(table, points)
    if views:  # --seeds: the same figures, each variant's mean and range over its seeds
        seeds = Section(
            "Across seeds",
            "Each variant's mean over its seeds, with the lowest and highest in brackets; a "
            "difference inside those ranges is not one to act on.",
        )
        seeds.tables = [
            (v.title, v.headers, [[Cell(c.text, c.value, c.best) for c in row] for row in v.rows])
            for v in views
        ]
        verdict = seed_verdict(table)  # as on the console and in compare.md, here at the head
        seeds.text = [verdict] if verdict else []
        sections.insert(0, seeds)
    return {"title": f"compare study {path.name}", "sections": sections}


def _marked_rows(table: pd.DataFrame, columns: list[str], lower: tuple) -> list[list[Cell]]:
    best = {}
    for c in columns[1:]:
        if c in table and pd.api.types.is_numeric_dtype(table[c]) and table[c].notna().any():
            best[c] = table[c].min() if c in lower else table[c].max()
    best.pop("train_minutes", None)
    best.pop("best_epoch", None)
    rows = []
    for _, r in table.iterrows():
        row = []
        for c in columns:
            cell = fmt(_plain(r[c])) if c != "variant" and c in table else label(r.get(c, "-"))
            cell.best = c in best and r[c] == best[c]
            row.append(cell)
        rows.append(row)
    return rows
