"""``defectdet compare``: train variants with the same budget, split and seed, evaluate each the
same way, and put them in one table (CSV, Markdown, bar chart).

Each variant (see :mod:`defectdet.engine.compare.variants`) is an ordinary run folder under
``PROJECT/NAME/``: a finished one is not trained again, an interrupted one is resumed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from rich.markup import escape

from defectdet.config import TrainConfig, apply, options, resolve_preset, validate
from defectdet.console import err, out
from defectdet.engine.compare.table import (
    COLUMNS,
    ClassCount,
    TablePoints,
    compare_figure,
    print_tables,
    seed_summary,
    to_markdown,
)
from defectdet.engine.compare.variants import Variant, slug
from defectdet.errors import ConfigError, DefectdetError
from defectdet.io import atomic_open, write_text
from defectdet.model.device import resolve_device


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
        out.rule(f"[bold]{escape(variant.name)}[/]")
        row = {"variant": variant.name, "seed": cfg.run.seed, "group": variant.group or None}
        try:
            run_dir = _train_or_resume(cfg, study_dir / name)
            scores, classes = _score(run_dir, points)
            rows.append({**row, **scores, "status": "ok"})
        except DefectdetError as exc:  # e.g. a diverged loss: that is a result too
            err.print(f"[red]variant {escape(variant.name)} failed:[/] {escape(str(exc))}")
            rows.append({**row, "status": f"failed: {str(exc)[:80]}"})
    seeded = any(v.group for v in variants)  # --seeds: the group column feeds the seed tables
    extra = ["seed", *(["group"] if seeded else []), "rarest_class", "map50", "map"]
    extra += [f"ap50_{c.name}" for c in classes]
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
    """compare.csv, compare.md and compare.png in the study folder (with ``--seeds`` also
    compare-seeds.csv, each variant's mean, sd, min and max over seeds), and the tables on
    screen."""
    study_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(study_dir / "compare.csv", "w", encoding="utf-8", newline="") as fh:
        table.to_csv(fh, index=False, float_format="%.4f")
    summary = seed_summary(table)
    if summary is not None:
        with atomic_open(study_dir / "compare-seeds.csv", "w", encoding="utf-8", newline="") as fh:
            summary.to_csv(fh, index=False, float_format="%.4f")
    write_text(study_dir / "compare.md", to_markdown(table, points, classes))
    _plot(table, study_dir / "compare.png", points)
    print_tables(table, points, classes or [], str(study_dir))


def _plot(table: pd.DataFrame, path: Path, points: TablePoints) -> None:
    with atomic_open(path, "wb") as fh:
        compare_figure(table, points).savefig(fh, format="png")
