"""How ``compare`` lays out its results: the summary and per-class tables (console, Markdown,
the report), the bar chart, and with ``--seeds`` each variant's mean and spread across seeds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

COLUMNS = [
    "variant",
    "pooled_ap50",
    "mean_class_ap50",
    "rarest_ap50",
    "recall_at_far",
    "far_at_recall",
    "auroc",
    "train_minutes",
    "best_epoch",
    "status",
]
"""The summary table's columns: AP50 with all boxes pooled (the plain view) beside its mean over
classes (the balanced one, which is also COCO's mAP50); compare.csv adds ``rarest_class``,
``map50``, ``map`` (mAP@[.5:.95]) and one ``ap50_<class>`` per class (most frequent in train
first)."""


@dataclass(frozen=True)
class TablePoints:
    """The operating points the table reports: defect recall at ``far`` false alarms on good
    parts, and false alarms at ``recall`` defect recall (image level)."""

    far: float = 0.05
    recall: float = 0.9


@dataclass(frozen=True)
class ClassCount:
    """A class and its instances in the train and val splits."""

    name: str
    train: int
    val: int


LOWER_IS_BETTER = ("far_at_recall",)


def _is_score(col: str) -> bool:
    """A score whose best value in its column is highlighted (most are higher-is-better)."""
    scores = (
        "pooled_ap50",
        "map50",
        "mean_class_ap50",
        "rarest_ap50",
        "recall_at_far",
        "auroc",
        "map",
    )
    return col in scores or col in LOWER_IS_BETTER or col.startswith("ap50_")


def _sections(
    table: pd.DataFrame, points: TablePoints, classes: list[ClassCount]
) -> list[tuple[str, list[tuple[str, str]]]]:
    """(title, [(column, header)]) of the summary table and, when classes are known, the
    per-class table (AP50, train/val instances in brackets; mAP@[.5:.95] last)."""
    summary = [(c, _summary_header(c, table, points)) for c in COLUMNS]
    sections = [("summary", summary)]
    if classes:
        per_class = [("variant", "variant")]
        per_class += [(f"ap50_{c.name}", f"{c.name} ({c.train}/{c.val})") for c in classes]
        per_class.append(("map", "mAP@[.5:.95]"))
        sections.append(("AP50 per class (train/val instances)", per_class))
    return sections


def _summary_header(col: str, table: pd.DataFrame, points: TablePoints) -> str:
    """A summary column's header; the rarest class's AP50 names that class."""
    rarest = table["rarest_class"].dropna() if "rarest_class" in table else pd.Series([])
    head = _header(col, points)
    return f"{head} ({rarest.iloc[0]})" if col == "rarest_ap50" and len(rarest) else head


def _header(col: str, points: TablePoints) -> str:
    return {
        "recall_at_far": f"defect recall @ {points.far:.0%} false alarms",
        "far_at_recall": f"false alarms @ {points.recall:.0%} defect recall",
        "mean_class_ap50": "mean per-class AP50",
        "rarest_ap50": "AP50 rarest class",
        "pooled_ap50": "AP50, boxes pooled",
        "map50": "mAP50",
        "auroc": "image AUROC",
        "train_minutes": "train min",
        "best_epoch": "best epoch",
    }.get(col, col)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def to_markdown(
    table: pd.DataFrame, points: TablePoints, classes: list[ClassCount] | None = None
) -> str:
    """The summary table and, when classes are known, the per-class table, as Markdown; with
    ``--seeds``, the tables across seeds after them."""
    parts = []
    for title, columns in _sections(table, points, classes or []):
        head = "| " + " | ".join(h for _, h in columns) + " |"
        rule = "|" + "|".join("---" if c == "variant" else "---:" for c, _ in columns) + "|"
        body = [
            "| " + " | ".join(_fmt(r[c]) for c, _ in columns) + " |" for _, r in table.iterrows()
        ]
        parts.append("\n".join([f"**{title}**", "", head, rule, *body]) + "\n")
    for view in seed_views(table, points):
        head = "| " + " | ".join(view.headers) + " |"
        rule = "|---|" + "---:|" * (len(view.headers) - 1)
        body = ["| " + " | ".join(c.text for c in row) + " |" for row in view.rows]
        parts.append("\n".join([f"**{view.title}**", "", head, rule, *body]) + "\n")
    verdict = seed_verdict(table)
    if verdict:
        parts.append(verdict + "\n")
    return "\n".join(parts)


def print_tables(
    table: pd.DataFrame, points: TablePoints, classes: list[ClassCount], where: str
) -> None:
    """The tables on the console (best value of each score in green); with ``--seeds``, the
    tables across seeds after them."""
    from rich.markup import escape
    from rich.table import Table

    from defectdet.console import out

    for title, columns in _sections(table, points, classes):
        rich_table = Table(title=f"{title} ({where})", title_justify="left")
        for col, head in columns:
            rich_table.add_column(head, justify="left" if col == "variant" else "right")
        best = {
            c: table[c].min() if c in LOWER_IS_BETTER else table[c].max()
            for c, _ in columns
            if _is_score(c) and table[c].notna().any()
        }
        for _, row in table.iterrows():
            cells = []
            for c, _ in columns:
                text = escape(_fmt(row[c]))
                cells.append(f"[bold green]{text}[/]" if c in best and row[c] == best[c] else text)
            rich_table.add_row(*cells)
        out.print(rich_table)
    for view in seed_views(table, points):
        rich_table = Table(title=f"{view.title} ({where})", title_justify="left")
        for i, head in enumerate(view.headers):
            rich_table.add_column(head, justify="left" if i == 0 else "right")
        for row in view.rows:
            cells = (escape(c.text) for c in row)
            rich_table.add_row(
                *(f"[bold green]{t}[/]" if c.best else t for c, t in zip(row, cells, strict=True))
            )
        out.print(rich_table)
    verdict = seed_verdict(table)
    if verdict:
        out.print(escape(verdict))


# ---------------------------------------------------------------------------- across seeds
SEED_SCORES = tuple(c for c in COLUMNS if c not in ("variant", "best_epoch", "status"))
"""The summary's scores (and training time), summarised across seeds with every
``ap50_<class>``."""


def seed_summary(table: pd.DataFrame) -> pd.DataFrame | None:
    """With ``--seeds`` (a ``group`` column): one row per variant, in table order, with
    ``seeds`` (the runs that finished) and for each score ``<score>_mean``, ``_sd`` (sample
    standard deviation; none for one run), ``_min`` and ``_max`` over its seeds. None for a study
    without seeds."""
    if "group" not in table or table["group"].isna().all():
        return None
    scores = [c for c in table.columns if c in SEED_SCORES or c.startswith("ap50_")]
    ok = table[table["status"] == "ok"]
    rows = []
    for group in dict.fromkeys(table["group"].dropna()):
        runs = ok[ok["group"] == group]
        row: dict[str, Any] = {"variant": group, "seeds": len(runs)}
        for c in scores:
            v = pd.to_numeric(runs[c], errors="coerce").dropna()
            row[f"{c}_mean"] = v.mean() if len(v) else None
            row[f"{c}_sd"] = v.std(ddof=1) if len(v) > 1 else None
            row[f"{c}_min"] = v.min() if len(v) else None
            row[f"{c}_max"] = v.max() if len(v) else None
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class SpreadCell:
    """A cell across seeds: ``text`` ("mean (min-max)"), ``value`` (the mean) and whether it is
    the column's best mean."""

    text: str
    value: float | None = None
    best: bool = False


@dataclass(frozen=True)
class SeedView:
    """One table across seeds, as the console, Markdown and the report all show it."""

    title: str
    headers: list[str]
    rows: list[list[SpreadCell]]


def seed_views(table: pd.DataFrame, points: TablePoints) -> list[SeedView]:
    """The summary and per-class tables across seeds (empty for a study without seeds)."""
    summary = seed_summary(table)
    if summary is None:
        return []
    main = [(c, _summary_header(c, table, points)) for c in SEED_SCORES if f"{c}_mean" in summary]
    per_class = [
        (c[: -len("_mean")], c[len("ap50_") : -len("_mean")])
        for c in summary.columns
        if c.startswith("ap50_") and c.endswith("_mean")
    ]
    views = [SeedView("summary across seeds: mean (min-max)", *_spread(summary, main))]
    if per_class:
        views.append(
            SeedView("AP50 per class across seeds: mean (min-max)", *_spread(summary, per_class))
        )
    return views


def _spread(
    summary: pd.DataFrame, columns: list[tuple[str, str]]
) -> tuple[list[str], list[list[SpreadCell]]]:
    """Headers and rows for ``columns`` ((score, header)): variant, seeds, then the scores, the
    best mean of each score column marked (lowest for false alarms; none for time)."""
    best = {}
    for c, _ in columns:
        means = pd.to_numeric(summary[f"{c}_mean"], errors="coerce")
        if c != "train_minutes" and means.notna().any():
            best[c] = means.min() if c in LOWER_IS_BETTER else means.max()
    rows = []
    for _, r in summary.iterrows():
        cells = [SpreadCell(str(r["variant"])), SpreadCell(str(r["seeds"]), r["seeds"])]
        for c, _ in columns:
            mean, lo, hi = (r[f"{c}_{k}"] for k in ("mean", "min", "max"))
            if mean is None or mean != mean:
                cells.append(SpreadCell("n/a"))
                continue
            text = f"{mean:.3f} ({lo:.3f}-{hi:.3f})"
            cells.append(SpreadCell(text, float(mean), c in best and mean == best[c]))
        rows.append(cells)
    return ["variant", "seeds", *(h for _, h in columns)], rows


def seed_verdict(table: pd.DataFrame, score: str = "mean_class_ap50") -> str | None:
    """One sentence on whether the variant with the best mean ``score`` leads on every seed
    (its lowest run above every other variant's highest) or only inside the seed spread. None
    for a study without seeds or with fewer than two scored variants."""
    summary = seed_summary(table)
    if summary is None:
        return None
    scored = summary[pd.to_numeric(summary[f"{score}_mean"], errors="coerce").notna()]
    if len(scored) < 2:
        return None
    best = scored.loc[pd.to_numeric(scored[f"{score}_mean"]).idxmax()]
    name, low = best["variant"], float(best[f"{score}_min"])
    mean, label = float(best[f"{score}_mean"]), _header(score, TablePoints())
    head = f"{name} leads on {label} over its seeds (mean {mean:.3f})"
    if best["seeds"] < 2:
        return f"{head}, but on one finished run: not a lead to act on."
    rivals = scored[scored["variant"] != name]
    close = rivals[pd.to_numeric(rivals[f"{score}_max"]) >= low]
    if close.empty:
        return (
            f"{head}, and its lowest seed ({low:.3f}) is above every other variant's highest: "
            "a lead the seeds agree on."
        )
    return (
        f"{head}, but its lowest seed ({low:.3f}) is not above the highest of "
        f"{', '.join(map(str, close['variant']))}: a lead inside the seed spread."
    )


def compare_figure(table: pd.DataFrame, points: TablePoints):
    """The variants' main scores side by side (bars); with ``--seeds``, each variant's mean over
    its seeds with the min-max range as a whisker."""
    from matplotlib.figure import Figure

    metrics = ["pooled_ap50", "mean_class_ap50", "rarest_ap50", "recall_at_far", "far_at_recall"]
    summary = seed_summary(table)
    names = table["variant"] if summary is None else summary["variant"]
    fig = Figure(figsize=(max(8, 1.2 * len(names) + 4), 4.5), dpi=100)
    ax = fig.subplots()
    width = 0.8 / len(metrics)
    for i, m in enumerate(metrics):
        xs = [x + (i - (len(metrics) - 1) / 2) * width for x in range(len(names))]
        if summary is None:
            values = table[m] if m in table else pd.Series(0.0, index=table.index)  # older
            ax.bar(xs, values.fillna(0).to_numpy(dtype=float), width, label=_header(m, points))
            continue
        mean, lo, hi = (
            pd.to_numeric(summary[f"{m}_{k}"], errors="coerce").fillna(0).to_numpy(dtype=float)
            for k in ("mean", "min", "max")
        )
        ax.bar(xs, mean, width, yerr=[mean - lo, hi - mean], capsize=2, label=_header(m, points))
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    title = "imbalance remedies compared"
    ax.set(
        ylim=(0, 1),
        ylabel="score",
        title=title if summary is None else f"{title} (mean, min-max over seeds)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
