"""Per-epoch metrics of a run: ``metrics.csv`` (rewritten atomically each epoch), the epoch line
on the console, and the ``training.png`` plot."""

from __future__ import annotations

import numbers
from pathlib import Path

import pandas as pd

from defectdet.console import out
from defectdet.io import atomic_open

#: Columns shown in the epoch line, in order, when present.
_LINE = (
    "train_loss",
    "train_cls",
    "train_box",
    "train_img",
    "pooled_ap50",
    "mean_class_ap50",
    "defect_recall",
    "false_alarm_rate",
    "mined_false_alarm_rate",
)


class History:
    def __init__(self, run_dir: Path, class_names: list[str]):
        self.run_dir, self.class_names = Path(run_dir), class_names
        self.rows: list[dict] = []

    def append(self, row: dict) -> None:
        self.rows.append(row)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def write(self) -> None:
        with atomic_open(self.run_dir / "metrics.csv", "w", encoding="utf-8", newline="") as fh:
            self.frame().to_csv(fh, index=False, float_format="%.5g")

    def print_epoch(self, row: dict, improved: bool) -> None:
        parts = [f"epoch {row['epoch']}"]
        for k in _LINE:
            v = _number(row.get(k))
            if v is not None:
                parts.append(f"{k} {v:.4f}")
        worst = _worst_class(row, self.class_names)
        if worst:
            parts.append(f"worst class {worst[0]} AP50 {worst[1]:.3f}")
        parts.append(f"{row['seconds']:.1f}s")
        out.print("  ".join(parts) + ("  [green]*best*[/]" if improved else ""))

    def plot(self) -> None:
        """Loss and validation curves (per-class AP50 beside the mean) as training.png."""
        if not self.rows:
            return
        with atomic_open(self.run_dir / "training.png", "wb") as fh:
            history_figure(self.frame(), self.class_names).savefig(fh, format="png")


def history_figure(df: pd.DataFrame, class_names: list[str]):
    """Training losses and learning rate; validation AP50 (boxes pooled), mean per-class AP50
    (= COCO's mAP50), AP50 per class and, when mining, the mined false-alarm rate; one column
    per epoch of ``metrics.csv``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    for k in ("train_loss", "train_cls", "train_box", "train_img"):
        if k in df:
            ax1.plot(df["epoch"], df[k], marker="o", label=k.removeprefix("train_"))
    ax1.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax1.legend(loc="upper left")
    if "lr" in df:
        lr = ax1.twinx()
        lr.plot(df["epoch"], df["lr"], color="0.6", linewidth=1)
        lr.set_ylabel("learning rate", color="0.4")
    keys = (
        "pooled_ap50",
        "mean_class_ap50",
        "mined_false_alarm_rate",
        *[f"ap50_{c}" for c in class_names],
    )
    for k in keys:
        if k in df and df[k].notna().any():
            style = ":" if k.startswith("ap50_") else "--" if k.startswith("mined") else "-"
            ax2.plot(df["epoch"], df[k], style, marker=".", label=k)
    ax2.set(xlabel="epoch", ylabel="AP / rate", title="validation", ylim=(0, 1))
    if ax2.lines:  # none before the first validation
        ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


FEW_VAL_BOXES = 20
"""A class with fewer validation boxes than this gives an AP50 too noisy to pick a checkpoint by
alone (one box more or less found moves it by 0.05 or more)."""
CLASS_MEANS = ("mean_class_ap50", "map50", "map")  # COCO's mAPs average over classes too


def early_pick_caveat(
    rows: list[dict], metric: str, best_epoch: int, instances: dict[str, int]
) -> str | None:
    """A warning when best.pt is an earlier validation than the last one, chosen by an AP figure
    (one class's, or a mean over classes) that rests on classes with fewer than
    :data:`FEW_VAL_BOXES` validation boxes: the pick may be noise, so both validations' figures
    are printed side by side for the user to judge (None when the pick is the last validation,
    rests on enough boxes, or is an image-level metric).

    ``rows`` are ``metrics.csv`` rows (``epoch``, the metric, ``map50``, ``auroc``, ...);
    ``instances`` the validation boxes per class."""
    validated = [r for r in rows if _number(r.get(metric)) is not None]
    if not validated or validated[-1]["epoch"] == best_epoch:
        return None
    if metric in CLASS_MEANS:
        few = {c: n for c, n in instances.items() if 0 < n < FEW_VAL_BOXES}
    elif metric.startswith("ap50_") and metric[5:] in instances:
        n = instances[metric[5:]]
        few = {metric[5:]: n} if n < FEW_VAL_BOXES else {}
    else:
        few = {}
    if not few:
        return None
    best = next(r for r in validated if r["epoch"] == best_epoch)
    last = validated[-1]
    names = ", ".join(f"{c} ({n})" for c, n in few.items())
    return (
        f"best.pt is epoch {best_epoch}, not the last validation (epoch {last['epoch']}), and "
        f"{metric} rests on classes with fewer than {FEW_VAL_BOXES} validation boxes: {names}. "
        f"The pick may be noise: epoch {best_epoch} {_figures(best)}; epoch {last['epoch']} "
        f"{_figures(last)}. weights/last.pt holds the last weights (not calibrated); "
        "--select-metric pooled_ap50 (every box counts once) or auroc (the image verdict, which "
        "every validation image informs) picks on more evidence; last takes the epoch the "
        "schedule ends on."
    )


def _figures(row: dict) -> str:
    keys = ("mean_class_ap50", "auroc")
    return ", ".join(f"{k} {row[k]:.3f}" for k in keys if _number(row.get(k)) is not None)


def _number(v) -> float | None:
    """``v`` when it is a number and not NaN (a metrics.csv cell may be missing or NaN)."""
    return v if isinstance(v, numbers.Real) and v == v else None


def _worst_class(row: dict, class_names: list[str]) -> tuple[str, float] | None:
    values = [(c, _number(row.get(f"ap50_{c}"))) for c in class_names]
    values = [(c, v) for c, v in values if v is not None]
    return min(values, key=lambda cv: cv[1]) if values else None
