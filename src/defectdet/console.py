"""Shared Rich consoles: results go to stdout, warnings and progress to stderr (so ``--json -``
and pipes stay clean)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from defectdet.data.problems import ProblemLog

# Piped output (logs, CI) gets a wide console so the per-class tables stay readable.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # messages stay greppable


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}")


def print_problems(problems: ProblemLog, limit: int = 20) -> None:
    """A counted summary of skipped or repaired records, naming files and records."""
    if not len(problems):
        return
    kinds = ", ".join(f"{k}: {n}" for k, n in problems.counts().items())
    err.print(
        f"[yellow]warning:[/] {len(problems)} problem(s) in the data ({escape(kinds)}); "
        "bad records were skipped (--strict makes this fatal)"
    )
    for p in list(problems)[:limit]:
        err.print(f"  [dim]-[/] {escape(str(p))}")
    if len(problems) > limit:
        err.print(f"  [dim]... and {len(problems) - limit} more[/]")
