"""Build an imbalanced, line-like version of DeepPCB for the imbalance study.

DeepPCB (../shared/data/deeppcb) is balanced as shipped (ratio 1.33) and has no defect-free
images. A real line is neither, so this script:

1. adds the defect-free templates (``*_temp.jpg``) as background images;
2. thins some classes hard. Dropping a box would leave its defect in the picture, unlabelled
   (label noise, not imbalance), so a thinned defect is *erased*: its box (plus a margin) is
   replaced by the same pixels of the aligned defect-free template;
3. resizes everything to ``--size`` (CPU budget; 256 px keeps the median box at about 14 px)
   and writes COCO train/val files.

Default keep-fractions: open 1.0, short 0.5, mousebite 0.25, spur 0.12, copper 0.06, pin-hole 0.03.
Train draws ``--images`` test images from trainval; val is all 500 test images (so the rare
classes have enough instances to measure). ``--holdout N`` also writes N of the trainval images
train did not draw, thinned the same way, as a dataset of its own beside OUT (``OUT-holdout``):
held-out data for questions validation cannot answer, such as which validation metric picks the
best epoch (``benchmarks/select_metric.py``).

Run: .venv/bin/python benchmarks/make_deeppcb_imbalanced.py OUT [--size 256] [--images 300]
[--negatives-folder] [--holdout N]
(the defaults are what docs/imbalance-study.md used).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from defectdet.io import write_json

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "deeppcb" / "PCBData"
KEEP = {
    "open": 1.0,
    "short": 0.5,
    "mousebite": 0.25,
    "spur": 0.12,
    "copper": 0.06,
    "pin-hole": 0.03,
}
MARGIN = 3  # px around an erased box, in the original 640 px image


def build(
    out: Path,
    size: int,
    n_images: int,
    seed: int,
    keep: dict[str, float],
    negatives_folder: bool = False,
    holdout: int = 0,
) -> dict:
    rng = np.random.default_rng(seed)
    docs, drawn = {}, {}
    for split, src in (("train", "coco_trainval.json"), ("val", "coco_test.json")):
        doc = json.loads((SHARED / src).read_text())
        count = n_images if split == "train" else len(doc["images"])
        drawn[split] = rng.choice(len(doc["images"]), min(count, len(doc["images"])), replace=False)
        folder = negatives_folder and split == "train"
        docs[split] = _convert(doc, out, split, size, drawn[split], rng, keep, folder)
    if holdout:  # trainval images train did not draw, thinned alike: data no run has seen
        doc = json.loads((SHARED / "coco_trainval.json").read_text())
        rest = np.setdiff1d(np.arange(len(doc["images"])), drawn["train"])
        hrng = np.random.default_rng(seed + 1)  # train and val stay what they were
        chosen = hrng.choice(rest, min(holdout, len(rest)), replace=False)
        docs["holdout"] = _convert(doc, holdout_dir(out), "test", size, chosen, hrng, keep)
    return {split: _summary(doc) for split, doc in docs.items()}


def holdout_dir(out: Path) -> Path:
    """Where ``--holdout`` writes its own dataset: beside OUT, so training never loads it."""
    return out.with_name(out.name + "-holdout")


def _convert(
    doc: dict,
    out: Path,
    split: str,
    size: int,
    chosen: np.ndarray,
    rng: np.random.Generator,
    keep: dict[str, float],
    templates_apart: bool = False,
) -> dict:
    names = {c["id"]: c["name"] for c in doc["categories"]}
    by_image: dict[int, list] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    images, anns = [], []
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    for idx in sorted(chosen):
        im = doc["images"][idx]
        test = cv2.imread(str(SHARED / im["file_name"]))
        temp = cv2.imread(str(SHARED / im["template"]))
        kept = []
        for a in by_image.get(im["id"], []):
            if rng.random() < keep[names[a["category_id"]]]:
                kept.append(a)
            else:
                _erase(test, temp, a["bbox"])
        scale = size / max(test.shape[:2])
        for kind, img, boxes in (("test", test, kept), ("temp", temp, [])):
            name = f"images/{split}/{Path(im['file_name']).stem.replace('_test', '')}_{kind}.jpg"
            if kind == "temp" and templates_apart:  # a folder of good parts, for --negatives
                name = f"good-parts/{Path(name).name}"
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(
                str(out / name),
                cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA),
            )
            if kind == "temp" and templates_apart:
                continue
            images.append(
                {
                    "id": len(images) + 1,
                    "file_name": name,
                    "width": round(img.shape[1] * scale),
                    "height": round(img.shape[0] * scale),
                }
            )
            for a in boxes:
                x, y, w, h = (v * scale for v in a["bbox"])
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": len(images),
                        "category_id": a["category_id"],
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
    result = {"images": images, "annotations": anns, "categories": doc["categories"]}
    write_json(out / "annotations" / f"{split}.json", result)
    return result


def _erase(test: np.ndarray, temp: np.ndarray, bbox: list[float]) -> None:
    x, y, w, h = (round(v) for v in bbox)
    x1, y1 = max(x - MARGIN, 0), max(y - MARGIN, 0)
    x2, y2 = min(x + w + MARGIN, test.shape[1]), min(y + h + MARGIN, test.shape[0])
    test[y1:y2, x1:x2] = temp[y1:y2, x1:x2]


def _summary(doc: dict) -> dict:
    names = {c["id"]: c["name"] for c in doc["categories"]}
    counts = {n: 0 for n in names.values()}
    for a in doc["annotations"]:
        counts[names[a["category_id"]]] += 1
    with_boxes = {a["image_id"] for a in doc["annotations"]}
    return {
        "images": len(doc["images"]),
        "background": len(doc["images"]) - len(with_boxes),
        "boxes": counts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument(
        "--images",
        type=int,
        default=300,
        help="test images drawn for train "
        "(val: all 500 test images); each brings its template as a background image",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--negatives-folder",
        action="store_true",
        help="write the train templates to OUT/good-parts/ instead of train.json (train with "
        "--negatives OUT/good-parts); val keeps its templates",
    )
    ap.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="also write N trainval images train did not draw (thinned alike, each with its "
        "template) to OUT-holdout/: a held-out test set no run trains or validates on",
    )
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"DeepPCB not found at {SHARED}")
    summary = build(
        args.out, args.size, args.images, args.seed, KEEP, args.negatives_folder, args.holdout
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
