"""Console output while training: the per-epoch progress bar and the sampling summary."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from defectdet.console import err, out


class RateProgress:
    """A Rich bar on stderr that shows images/s and a free-form info field.

    ``total`` counts bar steps (training steps, or images when one step is one image).
    """

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.images, self.t0 = 0, time.perf_counter()
        self.progress = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=not enabled,
        )
        self.task = self.progress.add_task(label, total=total, info="")

    def __enter__(self) -> RateProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def advance(self, images: int, steps: int | None = None, info: str = "") -> None:
        """``images`` more done, in ``steps`` bar steps (default: one per image)."""
        self.images += images
        rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(
            self.task,
            advance=images if steps is None else steps,
            info=f"{info} {rate:.1f} img/s".strip(),
        )


def print_sampling(stats: dict, class_names: list[str]) -> None:
    """What the sampler does to the class balance: share of instances before and after."""
    table = Table(
        title=f"sampling: {stats['sampler']} (epoch {stats['epoch'] + 1})", title_justify="left"
    )
    for col in ("class", "instances", "share", "after sampling", "share after"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, nb, sb, na, sa in zip(
        class_names,
        stats["instances_before"],
        stats["share_before"],
        stats["instances_after"],
        stats["share_after"],
        strict=True,
    ):
        table.add_row(name, str(nb), f"{sb:.1%}", str(na), f"{sa:.1%}")
    table.add_row(
        "images", str(stats["images_before"]), "", str(stats["images_after"]), "", style="dim"
    )
    table.add_row(
        "defect-free images",
        str(stats["background_before"]),
        "",
        str(stats["background_after"]),
        "",
        style="dim",
    )
    out.print(table)
