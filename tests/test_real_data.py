"""Readers on real data: DeepPCB from ../shared (skipped where it is absent)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from defectdet.analysis import build_report
from defectdet.data.formats import load_dataset

DEEPPCB = Path(__file__).resolve().parents[2] / "shared" / "data" / "deeppcb" / "PCBData"
pytestmark = pytest.mark.skipif(not DEEPPCB.is_dir(), reason="../shared/data/deeppcb not present")

# Published in ../shared/README.md: instances / images per class over all 1,500 images.
PUBLISHED = {
    "open": (1942, 1344),
    "short": (1506, 1101),
    "mousebite": (1965, 1269),
    "spur": (1625, 1184),
    "copper": (1474, 1241),
    "pin-hole": (1501, 1315),
}


def test_deeppcb_coco_counts_match_the_published_figures():
    totals = {name: [0, 0] for name in PUBLISHED}
    for split, expected_images in (("trainval", 1000), ("test", 500)):
        catalog = load_dataset(DEEPPCB / f"coco_{split}.json")
        assert catalog.num_images == expected_images
        assert len(catalog.problems) == 0
        report = build_report(catalog)
        for c in report["classes"]:
            totals[c["name"]][0] += c["instances"]
            totals[c["name"]][1] += c["images"]
    assert {k: tuple(v) for k, v in totals.items()} == PUBLISHED


def test_deeppcb_raw_annotations_agree_with_the_coco_files():
    """The raw `x1 y1 x2 y2 type` text files, read independently, give the same boxes."""
    catalog = load_dataset(DEEPPCB / "coco_test.json")
    raw = []
    for line in (DEEPPCB / "test.txt").read_text().split("\n")[:50]:
        if not line.strip():
            continue
        image, ann = line.split()
        stem = Path(image).stem
        for row in (DEEPPCB / ann).read_text().split("\n"):
            if row.strip():
                x1, y1, x2, y2, t = (int(v) for v in row.replace(",", " ").split())
                raw.append((f"{Path(image).parent}/{stem}_test.jpg", x1, y1, x2, y2, t - 1))
    raw_df = pd.DataFrame(raw, columns=["file_name", "x1", "y1", "x2", "y2", "class_id"])
    ours = catalog.boxes.merge(catalog.images[["image_id", "file_name"]], on="image_id")
    ours = ours[ours["file_name"].isin(set(raw_df["file_name"]))]
    cols = ["file_name", "class_id", "x1", "y1", "x2", "y2"]
    a = ours[cols].astype({"x1": int, "y1": int, "x2": int, "y2": int}).sort_values(cols)
    b = raw_df[cols].sort_values(cols)
    assert len(a) == len(b) > 0
    assert (a.to_numpy() == b.to_numpy()).all()
