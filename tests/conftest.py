"""Shared fixtures: tiny datasets in every format, written into tmp_path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

#: CLI options for a tiny, fast RetinaNet (64 px, narrow head, three levels, no augmentation).
TINY_MODEL_ARGS = [
    "--image-size",
    "64",
    "--fpn-channels",
    "32",
    "--head-convs",
    "1",
    "--levels",
    "3-5",
    "--workers",
    "0",
    "--augment",
    "none",
]


@pytest.fixture(scope="module", autouse=True)
def _free_module_folders(request, tmp_path_factory):
    """Delete the folders a test module made with ``tmp_path_factory`` once it has passed.

    ``tmp_path_retention_policy`` (pyproject) frees each passed test's ``tmp_path``, but not the
    module fixtures' folders (trained runs, checkpoints), which would otherwise pile up to
    ~10 GB over the suite and fill a small CI disk. Autouse and set up first, so torn down last.
    """
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed == failed:  # keep a failing module's folders to debug
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def one_thread():
    """One torch thread for many small ops; restored so other modules keep theirs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_image(path: Path, width: int = 64, height: int = 48, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((height, width, 3), value, dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def coco_doc(images, annotations, categories=(("scratch", 1), ("crack", 2))) -> dict:
    return {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in images],
        "annotations": [
            {"id": k + 1, "image_id": img, "category_id": c, "bbox": list(b), "iscrowd": 0}
            for k, (img, c, b) in enumerate(annotations)
        ],
        "categories": [{"id": cid, "name": n} for n, cid in categories],
    }


@pytest.fixture
def coco_dataset(tmp_path: Path) -> Path:
    """4 images (one defect-free), 2 classes, annotations/instances.json."""
    for n in range(4):
        write_image(tmp_path / "images" / f"{n}.jpg")
    doc = coco_doc(
        [(n + 1, f"{n}.jpg", 64, 48) for n in range(4)],
        [
            (1, 1, (5, 5, 10, 10)),
            (1, 2, (20, 20, 8, 6)),
            (2, 1, (30, 10, 12, 12)),
            (3, 1, (1, 1, 4, 4)),
        ],
    )
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances.json").write_text(json.dumps(doc))
    return tmp_path
