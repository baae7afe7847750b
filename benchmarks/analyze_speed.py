"""How fast is `defectdet analyze` on a big COCO file, next to `json.load` alone?

Generates a COCO file with 100,000 images and 1,000,000 boxes (imbalanced: one common class, a
long tail, 40 % defect-free images), then times, best of N:
  1. json.load of the file (the floor any COCO reader pays),
  2. load_dataset(check_images=False): parse + validate into the catalogue,
  3. build_report on the catalogue,
  4. optionally (--with-files) the same load with image-existence checks over 100,000 empty files.

Run: .venv/bin/python benchmarks/analyze_speed.py [--images N] [--boxes N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from defectdet.analysis import build_report
from defectdet.data.formats import load_dataset


def make_coco(path: Path, num_images: int, num_boxes: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    classes = ["scratch", "spot", "dent", "crack", "inclusion", "burn", "chip", "stain"]
    weights = np.array([0.6, 0.2, 0.08, 0.05, 0.03, 0.02, 0.015, 0.005])
    defect_images = np.arange(int(num_images * 0.6)) + 1
    img = rng.choice(defect_images, num_boxes)
    cls = rng.choice(len(classes), num_boxes, p=weights / weights.sum()) + 1
    wh = rng.uniform(4, 120, (num_boxes, 2)).round(1)
    xy = rng.uniform(0, 500, (num_boxes, 2)).round(1)
    doc = {
        "images": [
            {"id": i, "file_name": f"images/{i:06d}.jpg", "width": 640, "height": 640}
            for i in range(1, num_images + 1)
        ],
        "annotations": [
            {
                "id": k + 1,
                "image_id": int(img[k]),
                "category_id": int(cls[k]),
                "bbox": [float(xy[k, 0]), float(xy[k, 1]), float(wh[k, 0]), float(wh[k, 1])],
                "area": float(wh[k, 0] * wh[k, 1]),
                "iscrowd": 0,
            }
            for k in range(num_boxes)
        ],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)],
    }
    path.write_text(json.dumps(doc))


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--boxes", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--with-files", action="store_true", help="also time image-existence checks")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "annotations.json"
        make_coco(path, args.images, args.boxes)
        size_mb = path.stat().st_size / 1e6
        t_json = best_of(lambda: json.loads(path.read_bytes()), args.repeat)
        t_load = best_of(lambda: load_dataset(path, check_images=False), args.repeat)
        catalog = load_dataset(path, check_images=False)
        t_report = best_of(lambda: build_report(catalog), args.repeat)
        rows = [
            ("json.load alone", t_json),
            ("load_dataset (no file checks)", t_load),
            ("build_report", t_report),
            ("analyze total (load + report)", t_load + t_report),
        ]
        if args.with_files:
            (Path(tmp) / "images").mkdir()
            for i in range(1, args.images + 1):
                (Path(tmp) / "images" / f"{i:06d}.jpg").touch()
            t_files = best_of(lambda: load_dataset(path), args.repeat)
            rows.append(("load_dataset with file checks", t_files))
    print(
        f"{args.images:,} images, {args.boxes:,} boxes, {size_mb:.0f} MB JSON; "
        f"{platform.processor() or platform.machine()}, best of {args.repeat}"
    )
    for name, t in rows:
        print(f"  {name:34s} {t:6.2f} s  ({t / t_json:4.1f} x json.load)")


if __name__ == "__main__":
    main()
