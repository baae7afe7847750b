"""Everything a run needs before the first step: the data split, the options left on "auto"
resolved from the data, the run folder, and the datasets and loaders.

The resolved :class:`~defectdet.config.TrainConfig` is what gets saved as ``config.yaml``: with
it (and the data) the run can be reproduced exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectdet.config import TrainConfig
from defectdet.data.catalog import Catalog
from defectdet.data.formats import load_dataset
from defectdet.data.split import stratified_split
from defectdet.errors import ConfigError, DataError
from defectdet.io import ensure_dir, unique_dir

_TRAIN_SPLITS = ("train", "trainval")
_VAL_SPLITS = ("val", "valid", "test")


@dataclass
class RunData:
    catalog: Catalog
    train: Catalog
    val: Catalog


def load_run_data(cfg: TrainConfig) -> RunData:
    """Load the dataset and choose train/val (the data's own splits, else a stratified one)."""
    catalog = load_dataset(cfg.data.path, cfg.data.format, cfg.data.strict)
    train_name, val_name = _choose_splits(catalog, cfg)
    if train_name and val_name:
        train, val = catalog.split_subset(train_name), catalog.split_subset(val_name)
    else:
        pool = catalog.split_subset(train_name) if train_name else catalog
        train_ids, val_ids = stratified_split(pool, cfg.data.val_fraction, cfg.run.seed)
        train, val = catalog.subset(train_ids), catalog.subset(val_ids)
    if train.num_images == 0:
        raise DataError("the training split has no images")
    return RunData(catalog, train, val)


def _choose_splits(catalog: Catalog, cfg: TrainConfig) -> tuple[str, str]:
    present = catalog.splits()
    for given in (cfg.data.train_split, cfg.data.val_split):
        if given and given not in present:
            raise ConfigError(f"split {given!r} not in the data (it has: {present or 'none'})")
    train = cfg.data.train_split or next((s for s in _TRAIN_SPLITS if s in present), "")
    val = cfg.data.val_split or next((s for s in _VAL_SPLITS if s in present), "")
    return train, val


def resolve_config(cfg: TrainConfig, data: RunData) -> TrainConfig:
    """Fill in what the data decides: classes, image size, anchors, class weights."""
    from defectdet.analysis.recommend import class_weights
    from defectdet.analysis.stats import suggested_image_size
    from defectdet.model.anchors import fit_anchor_sizes, fit_aspect_ratios

    m, train = cfg.model, data.train
    if m.class_names and m.class_names != data.catalog.classes:
        raise ConfigError(
            f"config lists classes {m.class_names} but the data has {data.catalog.classes}"
        )
    m.class_names, m.num_classes = list(data.catalog.classes), data.catalog.num_classes
    if m.image_size <= 0:
        m.image_size = min(int(suggested_image_size(data.catalog.images) or 512), 1024)
    if m.anchors == "auto" and not m.anchor_sizes:
        wh = model_input_box_sizes(train, m.image_size)
        if len(wh):
            m.anchor_sizes = [
                round(float(s), 2) for s in fit_anchor_sizes(wh, m.min_level, m.max_level)
            ]
            m.aspect_ratios = [round(float(r), 3) for r in fit_aspect_ratios(wh)]
    elif m.anchors not in ("auto", "default"):
        raise ConfigError(f"--anchors must be auto or default, not {m.anchors!r}")
    counts = train.instance_counts()
    if not cfg.loss.class_weight_values:
        weights = class_weights(cfg.loss.class_weights, counts, train.classes)
        cfg.loss.class_weight_values = [round(float(w), 6) for w in weights]
    return cfg


def model_input_box_sizes(catalog: Catalog, image_size: int) -> np.ndarray:
    """(N, 2) box widths and heights after resizing each image's longer side to image_size."""
    sizes = catalog.images.set_index("image_id")[["width", "height"]].max(axis=1)
    scale = image_size / catalog.boxes["image_id"].map(sizes).to_numpy(dtype=float)
    b = catalog.boxes
    return np.stack([(b["x2"] - b["x1"]) * scale, (b["y2"] - b["y1"]) * scale], axis=1)


def new_run_dir(cfg: TrainConfig) -> Path:
    """``project/name``, or ``name2``, ``name3``... when taken (never overwritten unless
    ``exist_ok``); the chosen name is written back into the config."""
    run = unique_dir(cfg.run.project, cfg.run.name, cfg.run.exist_ok)
    ensure_dir(run / "weights")
    cfg.run.name = run.name
    return run
