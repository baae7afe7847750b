"""``defectdet compare``: train variants with the same budget, split and seed, evaluate each the
same way, and put them in one table (CSV, Markdown, bar chart).

A variant is a comma-separated list of ``key=value`` over the train options, keys named as in
``config.yaml`` (``loss=focal,gamma=2``, ``sampler=repeat-factor``, ``class_weights=effective``;
dashes and underscores are the same). Each variant is an ordinary run folder under
``PROJECT/NAME/``: a finished one is not trained again, an interrupted one is resumed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from defectdet.config import TrainConfig, apply, load_yaml, options, resolve_preset, validate
from defectdet.config.values import parse_pairs
from defectdet.console import err, out
from defectdet.errors import ConfigError, DefectdetError
from defectdet.io import atomic_open, write_text
from defectdet.model.device import resolve_device

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


@dataclass
class Variant:
    """A named set of train options (flat names, as on the command line without ``--``)."""

    name: str
    updates: dict[str, Any]


def parse_variant(text: str) -> Variant:
    """``"loss=focal,gamma=2"`` → Variant with ``{"loss": "focal", "gamma": 2}`` (values are
    read as YAML scalars)."""
    try:
        pairs = parse_pairs(text, f"variant {text!r}", "VALUE")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    values = {k: yaml.safe_load(v) if v else "" for k, v in pairs}
    return Variant(text.strip(), _updates(values, f"variant {text!r}"))


def _updates(pairs: dict[str, Any], where: str, empty_ok: bool = False) -> dict[str, Any]:
    """Option names checked against the schema (dashes and underscores are the same);
    ``empty_ok``: a named grid variant may change nothing (the base itself, as a baseline)."""
    table = options(TrainConfig)
    updates = {}
    for key, value in pairs.items():
        name = str(key).strip().replace("-", "_")
        if name not in table or name == "path":
            raise ConfigError(
                f"{where}: {key!r} is not a train option (e.g. loss, gamma, alpha, "
                "class_weights, sampler, background_fraction, copy_paste)"
            )
        updates[name] = value
    if not updates and not empty_ok:
        raise ConfigError(f"{where}: empty; give e.g. 'loss=ce'")
    return updates


def load_grid(path: str | Path) -> tuple[dict[str, Any], list[Variant]]:
    """A YAML grid: ``base:`` (train options, flat ``key: value``) and ``variants:`` (a list of
    ``key=value,...`` strings, or a mapping name → {key: value}, where ``{}`` is the base
    itself)."""
    data = load_yaml(path)
    base = _updates(data.get("base") or {"seed": 0}, f"{path}: base")
    raw = data.get("variants") or []
    if isinstance(raw, dict):
        variants = [
            Variant(str(name), _updates(opts or {}, f"{path}: {name}", empty_ok=True))
            for name, opts in raw.items()
        ]
    elif isinstance(raw, list):
        variants = [parse_variant(str(v)) for v in raw]
    else:
        raise ConfigError(f"{path}: 'variants' must be a list or a mapping")
    return base, variants


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name.replace(",", "+")).strip("_") or "variant"


def variant_configs(
    base: TrainConfig,
    variants: list[Variant],
    study_dir: Path,
    given: Iterable[str] | None = None,
) -> list[tuple[Variant, str, TrainConfig]]:
    """Each variant's validated config with its preset resolved (all checked before anything
    trains). ``given``: the option names the user set for every variant (None: those not at
    their default); a variant's own keys count as given too."""
    if not variants:
        raise ConfigError("no variants to compare; pass --runs or --grid")
    names = [slug(v.name) for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError("two variants have the same name")
    out = []
    for variant, name in zip(variants, names, strict=True):
        cfg = apply(base, variant.updates, f"variant {variant.name!r}")
        cfg = apply(cfg, {"project": str(study_dir), "name": name, "exist_ok": True})
        try:
            cuda = resolve_device(validate(cfg).run.device).type == "cuda"
            names = None if given is None else {*given, *variant.updates}
            cfg = validate(resolve_preset(cfg, names, cuda))
        except ConfigError as exc:
            raise ConfigError(f"variant {variant.name!r}: {exc}") from None
        out.append((variant, name, cfg))
    return out


def run_compare(
    base: TrainConfig,
    variants: list[Variant],
    study_dir: Path,
    points: TablePoints | None = None,
    given: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Train (or resume, or skip) every variant, evaluate its best.pt, write the table."""
    points = points or TablePoints()
    rows: list[dict[str, Any]] = []
    classes: list[ClassCount] = []
    for variant, name, cfg in variant_configs(base, variants, study_dir, given):
        out.rule(f"[bold]{variant.name}[/]")
        try:
            run_dir = _train_or_resume(cfg, study_dir / name)
            scores, classes = _score(run_dir, points)
            rows.append({"variant": variant.name, **scores, "status": "ok"})
        except DefectdetError as exc:  # e.g. a diverged loss: that is a result too
            err.print(f"[red]variant {variant.name} failed:[/] {exc}")
            rows.append({"variant": variant.name, "status": f"failed: {str(exc)[:80]}"})
    extra = ["rarest_class", "map50", "map", *(f"ap50_{c.name}" for c in classes)]
    table = pd.DataFrame(rows, columns=[*COLUMNS, *extra])
    write_outputs(table, study_dir, points, classes)
    return table


def _train_or_resume(cfg: TrainConfig, run_dir: Path) -> Path:
    from defectdet.engine.train.loop import train
    from defectdet.model import load_checkpoint

    last = run_dir / "weights" / "last.pt"
    if last.is_file():
        state = load_checkpoint(last).get("state", {})
        if state.get("finished"):
            out.print(f"already trained: {run_dir}")
            return run_dir
        return train(resume=run_dir)
    return train(cfg, given=options(TrainConfig))  # the preset is resolved already


def _score(run_dir: Path, points: TablePoints) -> tuple[dict[str, Any], list[ClassCount]]:
    """Evaluate best.pt on the run's own validation split: the row's scores, and the classes
    (most frequent in train first) with their train and val instance counts."""
    from defectdet.config import train_config
    from defectdet.engine.evaluate.score import score_catalog
    from defectdet.engine.inference.detectors import TorchDetector
    from defectdet.engine.train.setup import load_run_data
    from defectdet.model import load_checkpoint, resolve_device

    ckpt = load_checkpoint(run_dir / "weights" / "best.pt")
    cfg = train_config(ckpt["config"], "config")
    data = load_run_data(cfg)
    detector = TorchDetector.from_checkpoint(
        run_dir / "weights" / "best.pt", resolve_device(cfg.run.device)
    )
    rt = cfg.runtime()
    metrics, _ = score_catalog(detector, data.val, cfg.infer, rt.batch_size, rt.workers)
    counts = data.train.instance_counts()
    order = sorted(range(len(counts)), key=lambda k: -counts[k])  # stable: ties keep class order
    per_class = metrics.classes
    rarest = next((k for k in reversed(order) if per_class[k].ap50 is not None), None)
    history = pd.read_csv(run_dir / "metrics.csv")
    row = {
        "pooled_ap50": metrics.pooled_ap50,
        "mean_class_ap50": metrics.mean_class_ap50,
        "rarest_ap50": None if rarest is None else per_class[rarest].ap50,
        "recall_at_far": metrics.recall_at_false_alarm(points.far),
        "far_at_recall": metrics.false_alarm_at_recall(points.recall),
        "auroc": metrics.image_level["auroc"],
        "train_minutes": round(float(history["seconds"].sum()) / 60, 3),
        "best_epoch": int(ckpt.get("epoch", 0)),
        "rarest_class": None if rarest is None else data.train.classes[rarest],
        "map50": metrics.map50,
        "map": metrics.map,
    }
    val_counts = data.val.instance_counts()
    classes = [ClassCount(data.train.classes[k], int(counts[k]), int(val_counts[k])) for k in order]
    row |= {f"ap50_{c.name}": per_class[k].ap50 for c, k in zip(classes, order, strict=True)}
    return row, classes


def write_outputs(
    table: pd.DataFrame,
    study_dir: Path,
    points: TablePoints,
    classes: list[ClassCount] | None = None,
) -> None:
    """compare.csv, compare.md and compare.png in the study folder, and the tables on screen."""
    from rich.table import Table

    classes = classes or []
    study_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(study_dir / "compare.csv", "w", encoding="utf-8", newline="") as fh:
        table.to_csv(fh, index=False, float_format="%.4f")
    write_text(study_dir / "compare.md", to_markdown(table, points, classes))
    _plot(table, study_dir / "compare.png", points)
    for title, columns in _sections(table, points, classes):
        rich_table = Table(title=f"{title} ({study_dir})", title_justify="left")
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
                text = _fmt(row[c])
                cells.append(f"[bold green]{text}[/]" if c in best and row[c] == best[c] else text)
            rich_table.add_row(*cells)
        out.print(rich_table)


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
    rarest = table["rarest_class"].dropna() if "rarest_class" in table else pd.Series([])
    summary = [
        (
            c,
            _header(c, points)
            + (f" ({rarest.iloc[0]})" if c == "rarest_ap50" and len(rarest) else ""),
        )
        for c in COLUMNS
    ]
    sections = [("summary", summary)]
    if classes:
        per_class = [("variant", "variant")]
        per_class += [(f"ap50_{c.name}", f"{c.name} ({c.train}/{c.val})") for c in classes]
        per_class.append(("map", "mAP@[.5:.95]"))
        sections.append(("AP50 per class (train/val instances)", per_class))
    return sections


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
    """The summary table and, when classes are known, the per-class table, as Markdown."""
    parts = []
    for title, columns in _sections(table, points, classes or []):
        head = "| " + " | ".join(h for _, h in columns) + " |"
        rule = "|" + "|".join("---" if c == "variant" else "---:" for c, _ in columns) + "|"
        body = [
            "| " + " | ".join(_fmt(r[c]) for c, _ in columns) + " |" for _, r in table.iterrows()
        ]
        parts.append("\n".join([f"**{title}**", "", head, rule, *body]) + "\n")
    return "\n".join(parts)


def _plot(table: pd.DataFrame, path: Path, points: TablePoints) -> None:
    with atomic_open(path, "wb") as fh:
        compare_figure(table, points).savefig(fh, format="png")


def compare_figure(table: pd.DataFrame, points: TablePoints):
    """The variants' main scores side by side (bars)."""
    from matplotlib.figure import Figure

    metrics = ["pooled_ap50", "mean_class_ap50", "rarest_ap50", "recall_at_far", "far_at_recall"]
    fig = Figure(figsize=(max(8, 1.2 * len(table) + 4), 4.5), dpi=100)
    ax = fig.subplots()
    width = 0.8 / len(metrics)
    for i, m in enumerate(metrics):
        xs = [x + (i - (len(metrics) - 1) / 2) * width for x in range(len(table))]
        values = table[m] if m in table else pd.Series(0.0, index=table.index)  # older studies
        ax.bar(xs, values.fillna(0).to_numpy(dtype=float), width, label=_header(m, points))
    ax.set_xticks(range(len(table)))
    ax.set_xticklabels(table["variant"], rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 1), ylabel="score", title="imbalance remedies compared")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
