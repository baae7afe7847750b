"""How tiled inference merges each object's views, scored on held-out data.

Runs a checkpoint over a dataset once, tiled (the checkpoint's ``--train-tile`` unless ``--tile``
is given), keeps every tile's raw detections, and scores them under three merge rules through
``evaluate``'s metrics (:func:`evaluate_detections`):

- ``nms``: class-wise NMS alone over all tiles' boxes (defectdet before tile cores);
- ``cores``: each tile keeps the boxes centred in its core, then NMS;
- ``cores+join``: the default (``engine/inference/tile_merge``): cores, parts of objects no
  tile saw whole joined, then NMS.

The detections are the same for the three, so the differences are the merge's alone.

Run: .venv/bin/python benchmarks/tile_merge.py WEIGHTS DATA [--every K] [--tile SIZE]
[--json OUT]
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from defectdet.config import InferConfig, TileConfig
from defectdet.data.formats import load_dataset
from defectdet.engine.evaluate.metrics import evaluate_detections
from defectdet.engine.evaluate.score import catalog_sources
from defectdet.engine.inference import tile_merge
from defectdet.engine.inference.detectors import load_detector
from defectdet.engine.inference.run import Inference, merge_tiles

FIGURES = ("mean_class_ap50", "pooled_ap50", "auroc", "far_at_90")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@contextmanager
def without_joining():
    """The ``cores`` rule: :func:`tile_merge.join_parts` keeps every box as it is."""
    join = tile_merge.join_parts
    tile_merge.join_parts = lambda boxes, *_args, **_kw: (torch.arange(len(boxes)), boxes)
    try:
        yield
    finally:
        tile_merge.join_parts = join


def raw_detections(weights: Path, catalog, tile: int | None, batch: int = 8) -> tuple:
    """Per image: (catalogue id, meta, its tiles' detections); and the class thresholds."""
    detector = load_detector(weights, "torch", torch.device("cpu"))
    inference = Inference(detector, InferConfig(), TileConfig(tile=tile))
    if not inference.tile:
        raise SystemExit(f"{weights} was not trained on tiles: pass --tile SIZE")
    ids = catalog.images["image_id"].astype(int).tolist()
    out = []
    for batch_out in inference.tile_detections(catalog_sources(catalog), batch, 0):
        out += [(ids[m.index], m, p) for m, p in batch_out if p is not None]
    return out, inference.thresholds


def score(catalog, raw, thresholds, rule: str) -> dict:
    """The held-out figures of one merge rule."""
    dets = []
    for image_id, meta, preds in raw:
        if rule == "nms":
            meta = replace(meta, tile=0)  # merge_tiles merges tiles only when it knows the size
        with without_joining() if rule == "cores" else nullcontext():
            det = merge_tiles(preds, meta, InferConfig())
        det.image_id = image_id
        dets.append(det)
    m = evaluate_detections(catalog, dets, thresholds)
    return {
        "mean_class_ap50": m.mean_class_ap50,
        "pooled_ap50": m.pooled_ap50,
        "per_class_ap50": {c.name: c.ap50 for c in m.classes},
        "auroc": m.image_level.get("auroc"),
        "far_at_90": m.false_alarm_at_recall(0.9),
        "boxes": int(sum(len(d.scores) for d in dets)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--every", type=int, default=1, help="score every K-th image")
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    catalog = load_dataset(args.data)
    ids = catalog.images["image_id"].astype(int).tolist()
    catalog = catalog.subset(ids[:: args.every])
    raw, thresholds = raw_detections(args.weights, catalog, args.tile)
    result = {
        rule: score(catalog, raw, thresholds, rule) for rule in ("nms", "cores", "cores+join")
    }
    for rule, r in result.items():
        figures = "  ".join(f"{k} {_num(r[k])}" for k in FIGURES)
        classes = " ".join(f"{k} {_num(v)}" for k, v in r["per_class_ap50"].items())
        print(f"{rule:10s} {figures}  boxes {r['boxes']}  | {classes}")
    if args.json:
        args.json.write_text(json.dumps({"images": len(raw), **result}, indent=2))


if __name__ == "__main__":
    main()
