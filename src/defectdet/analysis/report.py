"""Assemble the dataset report: one JSON-serialisable dict that ``analyze`` prints, plots and
saves, and that ``train`` reads for its defaults (repeat factors, weights, image size).
"""

from __future__ import annotations

import math

import numpy as np

from defectdet.analysis import recommend, stats
from defectdet.config.presets import PRESETS
from defectdet.data.catalog import Catalog


def _num(x: float) -> float | None:
    """A plain float, or None for NaN/inf (JSON has neither)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _share(part: np.ndarray | int, whole: int) -> np.ndarray | float:
    return np.asarray(part, dtype=np.float64) / whole if whole else np.zeros_like(part, float)


def _class_rows(
    catalog: Catalog,
    table,
    instances: np.ndarray,
    images: np.ndarray,
    factors: np.ndarray,
    weights: np.ndarray,
) -> list[dict]:
    """One dict per class, in class order."""
    k = catalog.num_classes
    buckets = stats.bucket_counts(table["area"].to_numpy(), table["class_id"].to_numpy(), k)
    med = stats.class_medians(table, k)
    inst_share = _share(instances, int(instances.sum()))
    img_share = _share(images, catalog.num_images)
    rows = []
    for i, name in enumerate(catalog.classes):  # loops over classes, not boxes
        rows.append(
            {
                "name": name,
                "instances": int(instances[i]),
                "images": int(images[i]),
                "instance_share": float(inst_share[i]),
                "image_share": float(img_share[i]),
                "repeat_factor": float(factors[i]),
                "class_weight": float(weights[i]),
                "size_buckets": dict(zip(stats.SIZE_BUCKETS, map(int, buckets[i]), strict=True)),
                "median_width": _num(med.at[i, "w"]),
                "median_height": _num(med.at[i, "h"]),
                "median_rel_width": _num(med.at[i, "rel_w"]),
                "median_rel_height": _num(med.at[i, "rel_h"]),
            }
        )
    return rows


def _splits(catalog: Catalog, occ: stats.Occurrence) -> dict[str, dict]:
    """Per-split counts (empty when the data has no splits)."""
    split = catalog.images["split"].to_numpy()
    return {
        name: stats.count_summary(occ, catalog.classes, split == name) for name in catalog.splits()
    }


def _median_box_fraction(catalog: Catalog, table) -> float | None:
    """Median box side (sqrt area) as a fraction of its image's longer side."""
    if not len(table):
        return None
    images = catalog.images
    longer = np.maximum(images["width"].to_numpy(np.float64), images["height"].to_numpy(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = table["side"].to_numpy() / longer[table["row"].to_numpy()]
    frac = frac[np.isfinite(frac)]
    return float(np.median(frac)) if len(frac) else None


def build_report(
    catalog: Catalog,
    repeat_threshold: float | None = None,
    beta: float = recommend.DEFAULT_BETA,
    preset: str = "n",
    source: str | None = None,
    time_budget: float = 0.0,
) -> dict:
    """Everything ``defectdet analyze`` knows about a catalogue, as plain JSON types.

    ``repeat_threshold`` None chooses one with :func:`recommend.choose_repeat_threshold`;
    ``beta`` is the effective-number β behind each class's ``class_weight``; ``preset`` is the
    one the advised ``train`` command names (its input size rule applied to this data), on
    ``source`` (the data as the user named it; default the catalogue's root), for
    ``time_budget`` minutes (0: no budget).
    """
    k, n_img = catalog.num_classes, catalog.num_images
    table = stats.box_table(catalog)
    occ = stats.Occurrence.of(table, n_img, k)
    totals = stats.count_summary(occ, catalog.classes)
    instances = np.array([c["instances"] for c in totals["classes"]], dtype=np.int64)
    images = np.array([c["images"] for c in totals["classes"]], dtype=np.int64)

    freq = _share(images, n_img)
    t = recommend.choose_repeat_threshold(freq) if repeat_threshold is None else repeat_threshold
    factors = recommend.repeat_factors(freq, t)
    weights = recommend.effective_number_weights(instances, beta)
    buckets = np.bincount(stats.size_bucket(table["area"].to_numpy()), minlength=3)
    background_share = totals["background_share"]

    report = {
        "root": str(catalog.root),
        "negatives": {folder: len(ids) for folder, ids in catalog.negatives.items()},
        "format": catalog.format,
        "num_images": n_img,
        "num_background_images": totals["num_background_images"],
        "background_share": background_share,
        "always_ok_accuracy": background_share,  # "no defect" is right on exactly these
        "num_annotations": totals["num_annotations"],
        "num_classes": k,
        "imbalance_ratio": stats.imbalance_ratio(instances),
        "imbalance_ratio_images": stats.imbalance_ratio(images),
        "classes": _class_rows(catalog, table, instances, images, factors, weights),
        "objects_per_image": stats.objects_per_image(occ.per_image),
        "image_sizes": stats.image_size_summary(catalog.images),
        "box_sizes": dict(zip(stats.SIZE_BUCKETS, map(int, buckets), strict=True)),
        "box_size_histogram": stats.size_histogram(table["side"].to_numpy(), occ.class_id, k),
        "suggested_image_size": stats.suggested_image_size(catalog.images),
        "repeat_threshold": float(t),
        "repeat_epoch_images": stats.repeat_epoch_images(occ.pairs, factors, n_img),
        "effective_beta": float(beta),
        "splits": _splits(catalog, occ),
        "problems": dict(catalog.problems.counts()),
    }
    cap = PRESETS[preset].values["max_image_size"] if preset in PRESETS else 1024
    size = stats.model_input_size(catalog.images, 0, cap)
    fraction = _median_box_fraction(catalog, table)
    report["recipe"] = recommend.recipe(report, preset, size, fraction, source, time_budget)
    report["advice"] = recommend.advice(report)
    return report
