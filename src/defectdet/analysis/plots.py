"""A one-page picture of a dataset report: instances per class and box sizes per class.

matplotlib is imported inside :func:`plot_report`, so ``analyze`` without ``--plot`` (and every
other subcommand) does not pay for it.
"""

from __future__ import annotations

from pathlib import Path

from defectdet.io import atomic_open

LOG_SCALE_RATIO = 20.0  # bars spanning more than this factor get a log y-axis
BACKGROUND_LABEL = "images without defects"


def _spread(values: list[int]) -> float:
    """max / min over positive values (1 when there are none)."""
    positive = [v for v in values if v > 0]
    return max(positive) / min(positive) if positive else 1.0


def _bar_panel(ax, report: dict) -> None:
    """Instances per class, plus the background-only image count as a separate grey bar."""
    names = [c["name"] for c in report["classes"]]
    values = [c["instances"] for c in report["classes"]]
    colors = ["tab:blue"] * len(values)
    if report["num_background_images"]:
        names.append(BACKGROUND_LABEL)
        values.append(report["num_background_images"])
        colors.append("tab:gray")
    bars = ax.bar(range(len(values)), values, color=colors)
    many = len(values) > 12  # upright labels would overlap
    ax.bar_label(bars, fontsize=7, padding=2, rotation=90 if many else 0)
    ax.set_xticks(range(len(values)), names, rotation=90 if many else 45, ha="right", fontsize=8)
    if _spread(values) > LOG_SCALE_RATIO:
        ax.set_yscale("log")
    ax.set_ylabel("instances (grey bar: images)")
    ax.set_title("Instances per class")


def _size_panel(ax, report: dict) -> None:
    """Histogram of box sides (sqrt of area, px) per class, log-spaced bins."""
    import matplotlib

    hist = report["box_size_histogram"]
    edges = hist["bin_edges"]
    if not edges:
        ax.text(0.5, 0.5, "no boxes", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    cmap = matplotlib.colormaps["tab10" if len(report["classes"]) <= 10 else "tab20"]
    for i, (c, counts) in enumerate(zip(report["classes"], hist["counts"], strict=True)):
        if any(counts):
            ax.stairs(counts, edges, label=c["name"], linewidth=1.5, color=cmap(i % cmap.N))
    ax.set_xscale("log")
    if _spread([c["instances"] for c in report["classes"]]) > LOG_SCALE_RATIO:
        ax.set_yscale("log")  # otherwise rare classes are flat lines under the common ones
    for side, label in ((32, "small|medium"), (96, "medium|large")):
        if edges[0] < side < edges[-1]:
            ax.axvline(side, color="0.6", linestyle=":", linewidth=1)
            ax.text(
                side,
                1.0,
                label,
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                ha="center",
                va="bottom",
                color="0.4",
            )
    ax.set_xlabel("box size: sqrt(area) in px")
    ax.set_ylabel("boxes")
    ax.set_title("Box sizes per class", pad=14)
    if len(report["classes"]) <= 20:
        ax.legend(fontsize=7, ncols=2 if len(report["classes"]) > 10 else 1)


def plot_report(report: dict, path: str | Path) -> None:
    """Write :func:`report_figure` as a PNG to ``path``, atomically (temp file, then rename)."""
    with atomic_open(path, "wb") as fh:
        report_figure(report).savefig(fh, format="png", dpi=100)


def report_figure(report: dict):
    """Instances per class and box sizes, two panels.

    Uses a bare :class:`~matplotlib.figure.Figure`, which renders with the Agg canvas without
    touching pyplot or the global backend: safe headless, in threads, and inside notebooks.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5), layout="constrained")
    ax_bar, ax_size = fig.subplots(1, 2)
    _bar_panel(ax_bar, report)
    _size_panel(ax_size, report)
    fig.suptitle(
        f"{report['num_images']} images, {report['num_annotations']} boxes, "
        f"{report['num_background_images']} without defects"
    )
    return fig
