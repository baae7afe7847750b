"""Which validation metric should choose best.pt: score each metric's pick on held-out data.

For each run trained with ``--save-period 1`` (so every epoch's weights are kept as
``weights/epochN.pt``): read ``metrics.csv``, take the epoch each metric of :data:`METRICS` ranks
first (the earliest of equal values, as ``train`` does), and the last epoch; evaluate those
snapshots on a held-out set through ``evaluate``'s own path (:func:`score_checkpoint`) and
report what each pick gives there: mean per-class AP50, pooled AP50, image AUROC and the share of
good parts flagged at 90 % defect recall. ``--every`` evaluates every epoch and adds the held-out
best (the most any rule could pick) for scale.

Run: .venv/bin/python benchmarks/select_metric.py TEST RUN [RUN ...] [--split all] [--every]
[--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from defectdet.config import PredictConfig
from defectdet.data.formats import load_dataset
from defectdet.engine.evaluate.run import score_checkpoint

METRICS = ("mean_class_ap50", "pooled_ap50", "map", "auroc", "balanced_accuracy")
"""Validation columns of ``metrics.csv`` that ``--select-metric`` can name (``map50`` is
``mean_class_ap50`` under another name, so it is left out)."""

HELD_OUT = ("mean_class_ap50", "pooled_ap50", "auroc", "far_at_90")


def picks(history: pd.DataFrame) -> dict[str, int]:
    """The epoch each validation metric ranks first, and the last epoch."""
    out = {}
    for m in METRICS:
        col = pd.to_numeric(history[m], errors="coerce") if m in history else None
        if col is not None and col.notna().any():
            out[m] = int(history.loc[col.idxmax(), "epoch"])
    out["last"] = int(history["epoch"].max())
    return out


def held_out(test, weights: Path, split: str | None) -> dict[str, float | None]:
    """The held-out figures of one checkpoint."""
    m = score_checkpoint(test, weights, PredictConfig(), split).metrics
    return {
        "mean_class_ap50": m.mean_class_ap50,
        "pooled_ap50": m.pooled_ap50,
        "auroc": m.image_level.get("auroc"),
        "far_at_90": m.false_alarm_at_recall(0.9),
    }


def score_run(test, run: Path, split: str | None, every: bool) -> dict:
    """Per pick rule: its epoch and held-out figures (with ``every``: also the held-out best)."""
    history = pd.read_csv(run / "metrics.csv")
    chosen = picks(history)
    epochs = sorted(set(history["epoch"].astype(int))) if every else sorted(set(chosen.values()))
    cache = {}
    for e in epochs:
        path = run / "weights" / f"epoch{e}.pt"
        if not path.is_file():
            raise SystemExit(f"{path}: missing; train the run with --save-period 1")
        cache[e] = held_out(test, path, split)
        print(f"  {run.name} epoch {e}: " + _figures(cache[e]), flush=True)
    rows = {rule: {"epoch": e, **cache[e]} for rule, e in chosen.items()}
    if every:
        best = max(cache, key=lambda e: _num(cache[e]["mean_class_ap50"]))
        rows["held-out best"] = {"epoch": best, **cache[best]}
    return rows


def _num(v) -> float:
    return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _figures(row: dict) -> str:
    return "  ".join(f"{k} {_num(row[k]):.3f}" for k in HELD_OUT)


def summary(results: dict[str, dict]) -> pd.DataFrame:
    """Per pick rule: the mean held-out figures over runs, with the per-run epochs."""
    rules = {r for rows in results.values() for r in rows}
    table = []
    for rule in sorted(rules, key=lambda r: (r == "held-out best", r)):
        got = [rows[rule] for rows in results.values() if rule in rows]
        line = {"rule": rule, "runs": len(got), "epochs": ",".join(str(g["epoch"]) for g in got)}
        for k in HELD_OUT:
            vals = [g[k] for g in got if g[k] is not None]
            line[k] = round(float(np.mean(vals)), 4) if vals else None
            line[f"{k}_sd"] = round(float(np.std(vals)), 4) if len(vals) > 1 else None
        table.append(line)
    return pd.DataFrame(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("test", type=Path, help="held-out data (not the runs' training data)")
    ap.add_argument("runs", type=Path, nargs="+", help="train runs with --save-period 1")
    ap.add_argument("--split", default="all", help="split of the held-out data (default: all)")
    ap.add_argument("--every", action="store_true", help="also evaluate every epoch")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    test = load_dataset(args.test)
    results = {str(run): score_run(test, run, args.split, args.every) for run in args.runs}
    table = summary(results)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False))
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "summary": table.to_dict("records")}))


if __name__ == "__main__":
    main()
