"""Everything a run needs before the first step: the data split, what the data decides
(:class:`Resolved`: the model spec with its classes, image size and anchors, and the class
weights), and the run folder.

The user's :class:`~defectdet.config.TrainConfig` is saved untouched as ``config.yaml``; the
resolved values beside it as ``resolved.yaml`` (and in every checkpoint): with both (and the
data) the run can be reproduced exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectdet.config import TrainConfig
from defectdet.data.catalog import Catalog
from defectdet.data.formats import load_dataset
from defectdet.data.split import stratified_split
from defectdet.errors import ConfigError, DataError
from defectdet.io import ensure_dir, unique_dir
from defectdet.model.spec import ModelSpec

_TRAIN_SPLITS = ("train", "trainval")
_VAL_SPLITS = ("val", "valid", "test")


@dataclass
class RunData:
    catalog: Catalog
    train: Catalog
    val: Catalog

    @functools.cached_property
    def trained_on(self) -> list[str]:
        """The training images' resolved paths, for every checkpoint (resolved once)."""
        return self.train.image_keys()


def load_run_data(cfg: TrainConfig) -> RunData:
    """Load the dataset and choose train/val (the data's own splits, else a stratified one)."""
    catalog = load_dataset(
        cfg.data.path, cfg.data.format, cfg.data.strict, negatives=cfg.data.negatives
    )
    train_name, val_name = _choose_splits(catalog, cfg)
    negatives = catalog.negative_ids()
    if train_name and val_name:  # good parts from --negatives are split like the data
        neg_train, neg_val = _split_ids(catalog.subset(negatives), cfg)
        train_ids = [*catalog.split_subset(train_name).images["image_id"], *neg_train]
        val_ids = [*catalog.split_subset(val_name).images["image_id"], *neg_val]
    else:
        pool = catalog.split_subset(train_name) if train_name else catalog
        pool = catalog.subset([*pool.images["image_id"], *negatives])
        train_ids, val_ids = stratified_split(pool, cfg.data.val_fraction, cfg.run.seed)
    train, val = catalog.subset(train_ids), catalog.subset(val_ids)
    if train.num_images == 0:
        raise DataError("the training split has no images")
    return RunData(catalog, train, val)


def _split_ids(part: Catalog, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """Train and val ids of ``part`` (all to train when it has fewer than two images)."""
    ids = part.images["image_id"].tolist()
    if len(ids) < 2:
        return ids, []
    train_ids, val_ids = stratified_split(part, cfg.data.val_fraction, cfg.run.seed)
    return list(train_ids), list(val_ids)


def _choose_splits(catalog: Catalog, cfg: TrainConfig) -> tuple[str, str]:
    present = catalog.splits()
    for given in (cfg.data.train_split, cfg.data.val_split):
        if given and given not in present:
            raise ConfigError(f"split {given!r} not in the data (it has: {present or 'none'})")
    train = cfg.data.train_split or next((s for s in _TRAIN_SPLITS if s in present), "")
    val = cfg.data.val_split or next((s for s in _VAL_SPLITS if s in present), "")
    return train, val


@dataclass
class Resolved:
    """What the data decided for a run."""

    spec: ModelSpec
    class_weights: list[float] = field(default_factory=list)  # one per class; [] = none
    schedule: dict[str, Any] = field(default_factory=dict)  # --time-budget: the fitted steps

    def to_dict(self) -> dict[str, Any]:
        out = {"model_spec": self.spec.to_dict(), "class_weights": list(self.class_weights)}
        return out | ({"schedule": dict(self.schedule)} if self.schedule else {})

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], where: str) -> Resolved:
        from defectdet.model.restore import checkpoint_spec

        weights = ckpt.get("class_weights")
        if weights is None:  # defectdet 0.1 kept them in the loss config
            weights = (ckpt.get("config") or {}).get("loss", {}).get("class_weight_values", [])
        schedule = dict(ckpt.get("schedule") or {})
        return cls(checkpoint_spec(ckpt, where), [float(w) for w in weights], schedule)


def resolve(cfg: TrainConfig, data: RunData) -> Resolved:
    """The model spec and class weights for ``cfg`` on this data (image size, anchors and
    classes from the data where the options say so)."""
    from defectdet.analysis.recommend import class_weights
    from defectdet.analysis.stats import model_input_size
    from defectdet.model.anchors import fit_anchor_sizes, fit_aspect_ratios

    m, train, classes = cfg.model, data.train, list(data.catalog.classes)
    metric = cfg.run.select_metric
    if metric.startswith("ap50_") and metric[5:] not in classes:
        raise ConfigError(
            f"--select-metric {metric!r}: no class {metric[5:]!r} in the data (classes: "
            f"{', '.join(classes)})"
        )
    if m.train_tile:  # a tile at native resolution, within the cap
        size = m.image_size or min(max(32, round(m.train_tile / 32) * 32), m.max_image_size)
    else:
        size = model_input_size(data.catalog.images, m.image_size, m.max_image_size)
    sizes, ratios = None, None
    if m.anchors == "auto":
        wh = model_input_box_sizes(train, size, m.train_tile)
        if len(wh):
            sizes = [round(float(s), 2) for s in fit_anchor_sizes(wh, m.min_level, m.max_level)]
            ratios = [round(float(r), 3) for r in fit_aspect_ratios(wh)]
    weights = class_weights(cfg.loss.class_weights, train.instance_counts(), train.classes)
    spec = ModelSpec.from_config(m, classes, size, sizes, ratios)
    return Resolved(spec, [round(float(w), 6) for w in weights])


def model_input_box_sizes(catalog: Catalog, image_size: int, tile: int = 0) -> np.ndarray:
    """(N, 2) box widths and heights at the model's input: each image's longer side resized to
    image_size, or (``tile``) each tile of the original resized to image_size."""
    sizes = catalog.images.set_index("image_id")[["width", "height"]].max(axis=1)
    scale = image_size / catalog.boxes["image_id"].map(sizes).to_numpy(dtype=float)
    if tile:  # tiles of a smaller image are padded, not resized
        scale = np.full(len(catalog.boxes), image_size / tile)
    b = catalog.boxes
    return np.stack([(b["x2"] - b["x1"]) * scale, (b["y2"] - b["y1"]) * scale], axis=1)


def new_run_dir(cfg: TrainConfig) -> Path:
    """``project/name``, or ``name2``, ``name3``... when taken (never overwritten unless
    ``exist_ok``)."""
    run = unique_dir(cfg.run.project, cfg.run.name, cfg.run.exist_ok)
    ensure_dir(run / "weights")
    return run
