"""An operating point on the console: one row per class with its evidence, the image-level
line, and the notes (targets too thin to verify, targets out of reach)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from defectdet.engine.calibrate.operating_point import Evidence, OperatingPoint


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _interval(e: Evidence) -> str:
    if e.recall_low is None or e.recall_high is None:
        return "-"
    return f"{e.recall_low:.1%}–{e.recall_high:.1%}"


COLUMNS = (
    "",
    "threshold",
    "examples",
    "found",
    "recall",
    "95% interval",
    "precision",
    "false alarms on good parts",
)
"""The operating-point table's columns (the console and the HTML report show the same)."""


def render_operating_point(op: OperatingPoint, console: Console) -> None:
    """The table and notes of ``op``."""
    t = Table(
        title=f"operating point: {escape(op.objective)} (chosen on split {op.split})",
        title_justify="left",
    )
    for col in COLUMNS:
        t.add_column(col, justify="left" if not col else "right")
    for e in [*op.classes, op.image]:
        t.add_row(
            escape(e.name),
            f"{e.threshold:.3f}" if e is not op.image else "-",
            str(e.examples),
            str(e.found),
            _pct(e.recall),
            _interval(e),
            _pct(e.precision),
            _pct(e.false_alarm_rate),
        )
    console.print(t)
    for note in op.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
