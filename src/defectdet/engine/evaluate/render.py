"""How ``evaluate`` shows a :class:`~defectdet.engine.evaluate.metrics.MetricsResult`: per-class
table, summary, image-level block (balanced accuracy beside plain accuracy and the always-"ok"
baseline) and confusion matrix on the console; PR curves and the confusion matrix as PNGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from defectdet.io import atomic_open, ensure_dir


# ---------------------------------------------------------------------------- rendering
def _f(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if pct else f"{value:.3f}"


SUMMARY_COLUMNS = (
    "AP50, boxes pooled (plain)",
    "mean per-class AP50 (balanced; = COCO mAP50)",
    "mAP@[.5:.95]",
)
"""The summary's box figures: the plain view (every box counts once, so the common class
dominates) beside the balanced one (every class counts once)."""


def render_evaluation(report: dict, console: Console) -> None:
    """Per-class table, summary, image-level block and confusion matrix."""
    m = report["metrics"]
    console.print(
        f"[bold]evaluate[/] {escape(report['weights'])} on {escape(report['data'])} "
        f"split {report['split']}: {report['images']} images "
        f"({report['seconds']:.1f} s)"
    )
    _thresholds_line(report, console)
    console.print(_class_table(report))
    summary = Table(title="summary", title_justify="left")
    for col in SUMMARY_COLUMNS:
        summary.add_column(col, justify="right")
    summary.add_row(_f(m.get("pooled_ap50")), _f(m["mean_class_ap50"]), _f(m["map"]))
    console.print(summary)
    _image_level(m["image_level"], console)
    for folder, n in report.get("negatives", {}).items():
        rate = _f(n["false_alarm_rate"], True)
        console.print(
            f"good parts in {escape(folder)}: {n['flagged']} of {n['images']} flagged ({rate})"
        )
    console.print(_confusion_table(m))
    _promise(report, console)


PROMISE_COLUMNS = ("rate", "threshold", "when chosen", "here", "p", "verdict")
"""The promise table's columns (the console and the HTML report show the same)."""


def promise_title(report: dict) -> str:
    return (
        f"calibrated thresholds: split {report['operating_point']['split']} (when chosen) "
        f"against split {report['split']} (here); Fisher's exact test"
    )


def promise_rows(report: dict) -> list[list[str]]:
    """One row per calibrated rate: its name, threshold, both rates with counts, p, verdict
    (worse / holds / better)."""
    rows = []
    for c in report.get("promise") or []:
        rows.append(
            [
                c["label"],
                f"{c['threshold']:.3f}",
                f"{c['promised']:.1%} ({c['promised_count']}/{c['promised_of']})",
                f"{c['rate']:.1%} ({c['count']}/{c['of']})",
                f"{c['p_value']:.2g}",
                c["verdict"],
            ]
        )
    return rows


def _promise(report: dict, console: Console) -> None:
    """The calibrated rates beside those measured here, and a line when one got worse."""
    rows = promise_rows(report)
    if not rows:
        return
    t = Table(title=promise_title(report), title_justify="left")
    for col in PROMISE_COLUMNS:
        t.add_column(col, justify="left" if col in ("rate", "verdict") else "right")
    for row in rows:
        t.add_row(*map(escape, row[:-1]), "[red]worse[/]" if row[-1] == "worse" else row[-1])
    console.print(t)
    worse = [c["name"] for c in report["promise"] if c["worse"]]
    if worse:
        console.print(
            f"[yellow]note:[/] at the calibrated thresholds, {escape(', '.join(worse))} "
            "did worse here than when they were chosen, beyond chance: the scores have shifted "
            f"on this data. Calibrate on data like it: defectdet calibrate DATA -w "
            f"{escape(report['weights'])}"
        )


def _interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"{low:.0%}–{high:.0%}"


def _thresholds_line(report: dict, console: Console) -> None:
    """Where the thresholds come from: a calibration (with its objective), options, default."""
    source, op = report.get("threshold_source", ""), report.get("operating_point")
    if op and source.startswith("calibrated"):
        console.print(
            f"thresholds: {escape(source)} ({escape(op['objective'])} on split {op['split']})"
        )
        for note in op.get("notes", []):
            console.print(f"  [dim]calibration note: {escape(note)}[/]")
    elif source.startswith("default"):
        console.print(
            "thresholds: default 0.25 (uncalibrated: choose them with defectdet calibrate)"
        )
    else:
        console.print(f"thresholds: {escape(source)}")


CLASS_COLUMNS = (
    "class",
    "instances",
    "AP",
    "AP50",
    "threshold",
    "recall",
    "95% interval",
    "precision",
    "false alarms / image",
)
"""The per-class table's columns (the console and the HTML report show the same)."""


def _class_table(report: dict) -> Table:
    t = Table(
        title="per class at the thresholds (IoU 0.5; recall with its 95% interval)",
        title_justify="left",
    )
    for col in CLASS_COLUMNS:
        t.add_column(col, justify="left" if col == "class" else "right")
    for c in report["metrics"]["classes"]:
        t.add_row(
            escape(c["name"]),
            str(c["instances"]),
            _f(c["ap"]),
            _f(c["ap50"]),
            f"{c['threshold']:g}",
            _f(c["recall"]),
            _interval(c.get("recall_low"), c.get("recall_high")),
            _f(c["precision"]),
            _f(c.get("false_alarms_per_image")),
        )
    return t


def _image_level(il: dict, console: Console) -> None:
    """Defect-vs-ok figures; balanced accuracy beside plain accuracy and the always-ok line."""
    t = Table(
        title=f"image level: defect vs ok ({il['defect_images']} defect, "
        f"{il['ok_images']} ok images)",
        title_justify="left",
    )
    cols = (
        "defect recall (95%)",
        "false-alarm rate on good parts (95%)",
        "AUROC",
        "recall @ 5% FAR",
        "balanced accuracy",
        "accuracy",
        'always-"ok" accuracy',
    )
    for col in cols:
        t.add_column(col, justify="right")
    t.add_row(
        f"{_f(il['defect_recall'], True)} "
        f"({_interval(il.get('defect_recall_low'), il.get('defect_recall_high'))})",
        f"{_f(il['false_alarm_rate'], True)} "
        f"({_interval(il.get('false_alarm_rate_low'), il.get('false_alarm_rate_high'))})",
        _f(il["auroc"]),
        _f(il["recall_at_far_5"], True),
        _f(il["balanced_accuracy"], True),
        _f(il["accuracy"], True),
        _f(il["always_ok_accuracy"], True),
    )
    console.print(t)
    acc, base = il["accuracy"], il["always_ok_accuracy"]
    if acc is not None and base is not None and acc - base < 0.05:
        how = "below" if acc < base else "within 5 points of"
        console.print(
            f"[yellow]note:[/] accuracy {acc:.1%} is {how} the {base:.1%} of answering "
            '"ok" for every image; judge the model by defect recall, false-alarm rate and '
            "balanced accuracy"
        )


def _confusion_table(m: dict) -> Table:
    labels = m["confusion_labels"]
    t = Table(
        title="confusion matrix (rows: truth, columns: predicted; background = missed "
        "defect / false alarm)",
        title_justify="left",
    )
    t.add_column("truth \\ predicted", justify="left")
    for name in labels:
        t.add_column(escape(name), justify="right")
    for name, row in zip(labels, m["confusion_matrix"], strict=True):
        t.add_row(escape(name), *(str(v) for v in row))
    return t


# ---------------------------------------------------------------------------- plots
def plot_evaluation(report: dict, folder: Path) -> list[Path]:
    """:func:`evaluation_figures` as PNGs in ``folder`` (atomic writes)."""
    ensure_dir(folder)
    paths = []
    for name, fig in evaluation_figures(report).items():
        path = folder / f"{name}.png"
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
        paths.append(path)
    return paths


def evaluation_figures(report: dict) -> dict:
    """``pr_curves``, ``confusion_matrix``, ``thresholds`` (per-class recall and precision
    against the threshold, operating point marked) and ``roc`` (image level, operating point
    marked), as matplotlib figures."""
    from matplotlib.figure import Figure

    pr = Figure(figsize=(7, 5.5), layout="constrained")
    _pr_axes(pr.subplots(), report)
    cm = Figure(figsize=(2.5 + 0.7 * len(report["classes"]),) * 2, layout="constrained")
    _cm_axes(cm.subplots(), report["metrics"])
    classes = report["metrics"]["classes"]
    rows, cols = -(-len(classes) // 4), min(len(classes), 4)
    th = Figure(figsize=(4 * cols, 3.4 * rows), layout="constrained")
    _threshold_axes(th.subplots(rows, cols, squeeze=False), report)
    roc = Figure(figsize=(5, 5), layout="constrained")
    _roc_axes(roc.subplots(), report["metrics"])
    return {"pr_curves": pr, "confusion_matrix": cm, "thresholds": th, "roc": roc}


def _pr_axes(ax, report: dict) -> None:
    curves = report["pr_curves"]
    ap50 = {c["name"]: c["ap50"] for c in report["metrics"]["classes"]}
    recall = np.asarray(curves["recall"])
    for name, precision in curves["precision"].items():
        if precision is None:
            continue
        p = np.asarray(precision, dtype=float)
        p[p < 0] = np.nan  # recall level never reached
        ax.plot(recall, p, linewidth=1.5, label=f"{name} (AP50 {_f(ap50.get(name))})")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="recall",
        ylabel="precision",
        title="precision-recall per class (IoU 0.5)",
    )
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="lower left")


def _threshold_axes(axes, report: dict) -> None:
    """Per class: recall and precision against the threshold; a line at the operating point."""
    m = report["metrics"]
    curves = m.get("threshold_curves") or {}
    grid = np.asarray(curves.get("threshold", []), dtype=float)
    for ax, c in zip(axes.flat, m["classes"], strict=False):
        for key, style in (("recall", "-"), ("precision", "--")):
            values = curves.get(key, {}).get(c["name"])
            if values is not None:
                ax.plot(grid, np.array(values, dtype=float), style, label=key)
        ax.axvline(c["threshold"], color="0.3", linewidth=1, label="operating point")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="threshold", title=c["name"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(m["classes"]) :]:
        ax.set_visible(False)


def _roc_axes(ax, m: dict) -> None:
    """Image-level ROC (best detection score per image) with the operating point."""
    roc, il = m.get("image_roc"), m["image_level"]
    if roc:
        ax.plot(roc["fpr"], roc["tpr"], linewidth=1.5, label=f"AUROC {_f(il['auroc'])}")
    if il["false_alarm_rate"] is not None and il["defect_recall"] is not None:
        ax.plot(
            il["false_alarm_rate"],
            il["defect_recall"],
            "o",
            color="crimson",
            label="operating point",
        )
    ax.plot([0, 1], [0, 1], ":", color="0.6")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="false alarms on good parts",
        ylabel="defect recall",
        title="image level: defect vs ok",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def _cm_axes(ax, m: dict) -> None:
    """Colour = share of the truth row; text = counts."""
    cm = np.asarray(m["confusion_matrix"], dtype=float)
    labels = m["confusion_labels"]
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.5 else "black",
            )
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set(xlabel="predicted", ylabel="truth", title="confusion matrix (IoU 0.5)")
    ax.set_title("colour: share of the truth row", loc="right", fontsize=7, color="0.4")
