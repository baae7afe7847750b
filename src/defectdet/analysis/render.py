"""Print a dataset report (from :func:`defectdet.analysis.report.build_report`) as Rich tables."""

from __future__ import annotations

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from defectdet.analysis.recommend import FEW_IMAGES, SOME_IMAGES

WARN = "bold red"
CAUTION = "yellow"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}x"


def _name_style(images: int) -> str:
    """Warn-colour classes too rare to learn reliably."""
    if images < FEW_IMAGES:
        return WARN
    return CAUTION if images < SOME_IMAGES else ""


def _size(c: dict) -> tuple[str, str]:
    """Median box size: 'w×h' in px and relative to the image."""
    if c["median_width"] is None:
        return "-", "-"
    px = f"{c['median_width']:.0f}×{c['median_height']:.0f}"
    rel = f"{_pct(c['median_rel_width'])}×{_pct(c['median_rel_height'])}"
    return px, rel


def class_table(report: dict) -> Table:
    """Per-class counts, shares, remedies and box sizes, with a totals row."""
    table = Table(title="Classes", show_footer=True, header_style="bold")
    headers = [
        ("class", "left"),
        ("instances", "right"),
        ("images", "right"),
        ("% inst.", "right"),
        ("% images", "right"),
        ("repeat", "right"),
        ("loss wt", "right"),
        ("small", "right"),
        ("medium", "right"),
        ("large", "right"),
        ("median w×h px", "right"),
        ("rel. w×h", "right"),
    ]
    b = report["box_sizes"]
    defect_images = report["num_images"] - report["num_background_images"]
    footers = [
        "total",
        str(report["num_annotations"]),
        str(defect_images),
        "100%" if report["num_annotations"] else "-",
        _pct(defect_images / report["num_images"]) if report["num_images"] else "-",
        f"t={report['repeat_threshold']:.3g}",
        f"β={report.get('effective_beta', 0.999):g}",
        str(b["small"]),
        str(b["medium"]),
        str(b["large"]),
        "",
        "",
    ]
    for (header, justify), footer in zip(headers, footers, strict=True):
        table.add_column(header, footer=footer, justify=justify)  # type: ignore[arg-type]
    for c in report["classes"]:
        px, rel = _size(c)
        sb = c["size_buckets"]
        table.add_row(
            Text(c["name"], style=_name_style(c["images"])),
            str(c["instances"]),
            Text(str(c["images"]), style=_name_style(c["images"])),
            _pct(c["instance_share"]),
            _pct(c["image_share"]),
            f"{c['repeat_factor']:.2f}",
            f"{c['class_weight']:.2f}",
            str(sb["small"]),
            str(sb["medium"]),
            str(sb["large"]),
            px,
            rel,
        )
    return table


def _image_sizes(s: dict) -> str:
    if s["min_width"] is None:
        return "-"
    if s["distinct"] == 1:
        return f"{s['min_width']}×{s['min_height']} (all)"
    return (
        f"{s['min_width']}–{s['max_width']} × {s['min_height']}–{s['max_height']}, median "
        f"{s['median_width']:.0f}×{s['median_height']:.0f} ({s['distinct']} distinct)"
    )


def summary_panel(report: dict) -> Panel:
    """Headline figures, with the accuracy paradox emphasised."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    opi = report["objects_per_image"]
    grid.add_row("images", str(report["num_images"]))
    grid.add_row(
        "without defects",
        f"{report['num_background_images']} ({_pct(report['background_share'])})",
    )
    for folder, n in report.get("negatives", {}).items():
        grid.add_row("  from --negatives", f"{n} in {escape(folder)}")
    grid.add_row("annotations", str(report["num_annotations"]))
    grid.add_row(
        "imbalance ratio",
        f"{_ratio(report['imbalance_ratio'])} by instances, "
        f"{_ratio(report['imbalance_ratio_images'])} by images",
    )
    grid.add_row(
        "objects per image",
        f"mean {_num(opi['mean'], '.2f')}, median {_num(opi['median'], 'g')}, "
        f"max {_num(opi['max'], 'd')}, mean over defect images "
        f"{_num(opi['mean_over_defect_images'], '.2f')}",
    )
    grid.add_row("image sizes", _image_sizes(report["image_sizes"]))
    grid.add_row("suggested --image-size", _num(report["suggested_image_size"], "d"))
    parts: list = [grid]
    acc = report["always_ok_accuracy"]
    if acc is not None:
        parts.append(
            Text(
                f"\nA model that always answers 'no defect' scores {_pct(acc)} image accuracy "
                "on this data: accuracy is not a useful metric here.",
                style="bold magenta",
            )
        )
    title = f"Dataset {report.get('root', '')}" + (
        f" ({report['format']})" if report.get("format") else ""
    )
    return Panel(Group(*parts), title=Text(title), expand=False)  # no markup in paths


def split_table(report: dict) -> Table | None:
    """Instances (images) per class and split; None when the data has no splits."""
    splits = report.get("splits") or {}
    if not splits:
        return None
    table = Table(title="Splits: instances (images)", header_style="bold")
    table.add_column("class")
    for name in splits:
        table.add_column(name, justify="right")
    for i, c in enumerate(report["classes"]):
        cells = []
        for s in splits.values():
            sc = s["classes"][i]
            style = WARN if sc["instances"] == 0 and c["instances"] > 0 else ""
            cells.append(Text(f"{sc['instances']} ({sc['images']})", style=style))
        table.add_row(c["name"], *cells)
    table.add_section()
    table.add_row("annotations", *(str(s["num_annotations"]) for s in splits.values()))
    table.add_row("images", *(str(s["num_images"]) for s in splits.values()))
    table.add_row(
        "without defects",
        *(f"{s['num_background_images']} ({_pct(s['background_share'])})" for s in splits.values()),
    )
    return table


def render_report(report: dict, console: Console) -> None:
    """Summary panel, class table, split table (if any), then the advice as bullets."""
    console.print(summary_panel(report))
    console.print(class_table(report))
    splits = split_table(report)
    if splits is not None:
        console.print(splits)
    problems = report.get("problems") or {}
    if problems:
        kinds = ", ".join(f"{k}: {n}" for k, n in problems.items())
        console.print(f"[yellow]Problems while loading:[/] {kinds}")
    if report.get("advice"):
        console.print("[bold]Advice[/]")
        for line in report["advice"]:
            # markup=False: advice quotes class names and `--options` verbatim.
            console.print(Text("  • ") + Text(line), markup=False)
