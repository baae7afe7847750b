"""defectdet predict: inputs, streamed outputs, thresholds, tiling, failures, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from defectdet.cli import app
from defectdet.data.preprocess import tile_grid
from defectdet.engine.inference.detectors import TorchDetector
from defectdet.engine.inference.sources import list_sources
from defectdet.errors import ConfigError, DataError, OutputExistsError
from defectdet.model import PostprocessSettings
from detector_helpers import make_checkpoint, predict_options, run_predict, write_images


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def opts(weights: Path, out: Path | None, **kw) -> dict:
    kw = {"workers": 0, "device": "cpu", "progress": False, "conf": 0.5} | kw
    return predict_options(weights, out, **kw)


def predict(source, o: dict, detector=None) -> dict:
    return run_predict(source, o, detector)


# ---------------------------------------------------------------------------- sources
def test_source_kinds(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    write_images(root, 2)
    write_images(root / "sub", 1, ext="jpg")
    (root / "notes.txt").write_text("not an image")
    names = [s.name for s in list_sources(root)]
    assert names == ["000.png", "001.png", "sub/000.jpg"]  # recursive, sorted, images only
    assert [s.name for s in list_sources(root / "001.png")] == ["001.png"]
    assert [s.name for s in list_sources(f"{root}/**/*.jpg")] == ["sub/000.jpg"]
    listing = root / "list.txt"
    listing.write_text("# good ones\nsub/000.jpg\n\n001.png\n")
    got = list_sources(listing)
    assert [s.name for s in got] == ["sub/000.jpg", "001.png"]  # list order kept
    assert got[0].path == root / "sub" / "000.jpg"  # relative to the list's folder
    with pytest.raises(DataError, match="no such"):
        list_sources(tmp_path / "missing")
    with pytest.raises(DataError, match="no images"):
        list_sources(f"{root}/*.bmp")


# ---------------------------------------------------------------------------- outputs
def test_outputs_consistent_with_thresholds(tmp_path: Path, weights: Path) -> None:
    write_images(tmp_path / "in", 5)
    o = opts(weights, tmp_path / "out", conf=0.6, class_conf="b=0.3", workers=2, batch_size=2)
    summary = predict(tmp_path / "in", o)
    out = tmp_path / "out"
    boxes = read_csv(out / "predictions.csv")
    images = read_csv(out / "images.csv")
    every = json.loads((out / "predictions.json").read_text())
    coco = [d for d in every if d["above_threshold"]]
    assert len(every) > len(coco)  # the JSON also holds what scored below the thresholds
    assert all(d["score"] >= 0.05 for d in every)  # down to the AP floor
    assert not (out / "predictions.jsonl").exists()  # internal, removed once the JSON is whole
    assert len(boxes) == len(coco) == sum(int(r["n_boxes"]) for r in images) == summary["boxes"]
    assert summary["boxes"] > 0 and summary["images"] == len(images) == 5
    thr = {"a": 0.6, "b": 0.3}
    for row, det in zip(boxes, coco, strict=True):
        assert float(row["score"]) >= thr[row["class"]]
        assert det["file_name"] == row["file_name"] and det["class_name"] == row["class"]
        x, y, w, h = det["bbox"]
        assert x == pytest.approx(float(row["x1"]), abs=0.006)  # the CSV rounds to 0.01 px
        assert w == pytest.approx(float(row["x2"]) - x, abs=0.011)
        assert x >= 0 and x + w <= 96.01 and y >= 0 and y + h <= 72.01
        assert det["category_id"] == ["a", "b"].index(row["class"]) + 1
    for r in images:
        passes = any(
            r[f"max_score_{c}"] and float(r[f"max_score_{c}"]) >= t for c, t in thr.items()
        )
        assert r["verdict"] == ("defect" if passes else "ok")
        assert (int(r["n_boxes"]) > 0) == passes
        assert (r["width"], r["height"]) == ("96", "72")
    assert summary["defect_images"] == sum(r["verdict"] == "defect" for r in images)
    assert summary["boxes_per_class"] == {c: sum(b["class"] == c for b in boxes) for c in "ab"}


def pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    """(N, N) IoU of xyxy boxes, written out here (not torchvision's)."""
    x1 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area[:, None] + area[None, :] - inter)


def largest_same_class_iou(detections: list[dict]) -> float:
    """The largest IoU between two detections of the same class (COCO xywh) of one image."""
    worst = 0.0
    for c in {d["category_id"] for d in detections}:
        xywh = np.array([d["bbox"] for d in detections if d["category_id"] == c]).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        iou = pairwise_iou(xyxy) - np.eye(len(xyxy))
        worst = max(worst, float(iou.max(initial=0.0)))
    return worst


def cli_detections(out: Path, source: Path, weights: Path, *options: str) -> dict[str, list]:
    """``defectdet predict`` with ``options``: every detection of predictions.json by image."""
    args = ["predict", str(source), "-w", str(weights), "--out", str(out), "--workers", "0"]
    result = CliRunner().invoke(app, [*args, "--conf", "0.3", *options])
    assert result.exit_code == 0, result.output
    per_image: dict[str, list[dict]] = {}
    for d in json.loads((out / "predictions.json").read_text()):
        per_image.setdefault(d["file_name"], []).append(d)
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == sum(d["above_threshold"] for v in per_image.values() for d in v)
    return per_image


def test_max_det_and_iou_change_the_detections(tmp_path: Path, weights: Path) -> None:
    """--max-det keeps the best N detections of each image; --iou is the overlap above which
    NMS drops the lower-scored of two same-class boxes. Through the command line."""
    write_images(tmp_path / "in", 3, width=96, height=96)
    default = cli_detections(tmp_path / "default", tmp_path / "in", weights)
    assert min(len(v) for v in default.values()) > 5
    assert 0.3 < max(largest_same_class_iou(v) for v in default.values()) <= 0.5
    best_5 = cli_detections(tmp_path / "max-det", tmp_path / "in", weights, "--max-det", "5")
    assert best_5.keys() == default.keys()
    for name, dets in best_5.items():
        top = sorted(default[name], key=lambda d: -d["score"])[:5]
        assert [(d["category_id"], d["score"], d["bbox"]) for d in dets] == [
            (d["category_id"], d["score"], d["bbox"]) for d in top
        ]
    strict_nms = cli_detections(tmp_path / "iou", tmp_path / "in", weights, "--iou", "0.3")
    assert max(largest_same_class_iou(v) for v in strict_nms.values()) <= 0.3 + 1e-6
    assert sum(map(len, strict_nms.values())) < sum(map(len, default.values()))


def test_iou_holds_on_letterboxed_images(tmp_path: Path, weights: Path) -> None:
    write_images(tmp_path / "in", 3, width=96, height=72)
    detections = cli_detections(tmp_path / "out", tmp_path / "in", weights)
    assert max(largest_same_class_iou(v) for v in detections.values()) <= 0.5 + 1e-6


def test_summary_json_counts_what_the_files_hold(tmp_path: Path, weights: Path) -> None:
    write_images(tmp_path / "in", 5)
    (tmp_path / "in" / "002.png").write_bytes(b"not a png")
    o = opts(weights, tmp_path / "out", conf=0.6, class_conf="b=0.3", batch_size=2)
    returned = predict(tmp_path / "in", o)
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(returned))  # written as returned (and --json)
    assert set(summary) == {
        "images",
        "skipped",
        "skipped_files",
        "defect_images",
        "ok_images",
        "boxes",
        "boxes_per_class",
        "seconds",
        "images_per_s",
        "timings_s",
        "thresholds",
        "threshold_source",
        "out",
        "inputs",
    }
    images, boxes = read_csv(out / "images.csv"), read_csv(out / "predictions.csv")
    verdicts = [r["verdict"] for r in images]
    assert summary["inputs"] == 5 and summary["images"] == len(images) == 4
    assert summary["skipped"] == 1 and summary["skipped_files"] == ["002.png"]
    assert summary["defect_images"] == verdicts.count("defect") > 0
    assert summary["ok_images"] == verdicts.count("ok") == 4 - summary["defect_images"]
    assert summary["boxes"] == len(boxes) == sum(int(r["n_boxes"]) for r in images) > 0
    assert summary["boxes_per_class"] == {c: [b["class"] for b in boxes].count(c) for c in "ab"}
    assert summary["thresholds"] == {"a": 0.6, "b": 0.3}
    assert summary["threshold_source"] == "--conf and --class-conf"
    assert summary["out"] == str(out)
    assert summary["seconds"] > 0
    # Both are rounded (seconds to 1 ms): on a fast run that alone moves the ratio by ~1 %.
    rounding = 0.0005 / summary["seconds"] + 0.005 / summary["images_per_s"]
    assert summary["images_per_s"] == pytest.approx(4 / summary["seconds"], rel=0.01 + rounding)
    timings = summary["timings_s"]
    assert set(timings) == {"wait_for_data", "model", "postprocess", "write"}
    assert all(v >= 0 for v in timings.values()) and timings["model"] > 0
    assert sum(timings.values()) <= summary["seconds"] + 0.005  # parts of the whole run


def test_corrupt_image_skipped_with_warning(tmp_path: Path, weights: Path, capsys) -> None:
    write_images(tmp_path / "in", 3)
    (tmp_path / "in" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    summary = predict(tmp_path / "in", opts(weights, tmp_path / "out", batch_size=2))
    stderr = " ".join(capsys.readouterr().err.split())
    assert "skipping unreadable image 001.png" in stderr
    assert summary["skipped"] == 1 and summary["skipped_files"] == ["001.png"]
    names = [r["file_name"] for r in read_csv(tmp_path / "out" / "images.csv")]
    assert names == ["000.png", "002.png"]


def test_existing_output_not_overwritten(tmp_path: Path, weights: Path) -> None:
    write_images(tmp_path / "in", 1)
    predict(tmp_path / "in", opts(weights, tmp_path / "out"))
    with pytest.raises(OutputExistsError, match="exist-ok"):
        predict(tmp_path / "in", opts(weights, tmp_path / "out"))
    predict(tmp_path / "in", opts(weights, tmp_path / "out", exist_ok=True))
    # Default folders are numbered, never reused.
    o = opts(weights, None, project=tmp_path / "runs")
    first, second = predict(tmp_path / "in", o), predict(tmp_path / "in", o)
    assert (Path(first["out"]).name, Path(second["out"]).name) == ("exp", "exp2")


def test_bad_options(tmp_path: Path, weights: Path) -> None:
    write_images(tmp_path / "in", 1)
    with pytest.raises(ConfigError, match=r"unknown class 'crack'.*a, b"):
        predict(tmp_path / "in", opts(weights, tmp_path / "o", class_conf="crack=0.2"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--half needs a CUDA device"):
            predict(tmp_path / "in", opts(weights, tmp_path / "o", half=True))


# ---------------------------------------------------------------------------- streaming
class CrashOnCall:
    """A real detector that raises on its ``n``-th call (a crash mid-run)."""

    def __init__(self, inner: TorchDetector, n: int) -> None:
        self.inner, self.n, self.calls = inner, n, 0
        self.class_names, self.image_size = inner.class_names, inner.image_size

    def configure(self, settings: PostprocessSettings) -> None:
        self.inner.configure(settings)

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("simulated crash")
        return self.inner(batch)


def test_rows_on_disk_after_crash(tmp_path: Path, weights: Path) -> None:
    write_images(tmp_path / "in", 8)
    det = CrashOnCall(TorchDetector.from_checkpoint(weights, torch.device("cpu")), n=3)
    with pytest.raises(RuntimeError, match="simulated"):
        predict(
            tmp_path / "in", opts(weights, tmp_path / "out", batch_size=2, conf=0.3), detector=det
        )
    rows = read_csv(tmp_path / "out" / "images.csv")
    assert [r["file_name"] for r in rows] == ["000.png", "001.png", "002.png", "003.png"]
    boxes = read_csv(tmp_path / "out" / "predictions.csv")
    assert len(boxes) == sum(int(r["n_boxes"]) for r in rows) > 0
    assert not (tmp_path / "out" / "predictions.json").exists()  # only complete runs get it


# ---------------------------------------------------------------------------- tiling
class BrightBlobDetector:
    """Fake model: one class-0 box around each bright blob of each input, in model pixels."""

    image_size = 64

    def __init__(self) -> None:
        self.class_names = ["blob"]
        self.batch_sizes: list[int] = []

    def configure(self, settings: PostprocessSettings) -> None:
        self.settings = settings

    def __call__(self, batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        self.batch_sizes.append(len(batch))
        out = []
        for img in batch:
            mask = (img[0].numpy() > 127).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:n]]
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.full((n - 1,), 0.9),
                    "labels": torch.zeros(n - 1, dtype=torch.int64),
                }
            )
        return out


def test_tiles_map_back_to_full_image(tmp_path: Path) -> None:
    squares = [(100, 20, 116, 36), (240, 150, 264, 174), (10, 90, 30, 110)]  # x1, y1, x2, y2
    img = np.zeros((200, 300, 3), dtype=np.uint8)
    for x1, y1, x2, y2 in squares:
        img[y1:y2, x1:x2] = 255
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "big.png"), img)
    # 128-px tiles, stride 96: x starts 0, 96, 172; y starts 0, 72. Square 1 lies in two tiles
    # (x overlap), square 3 in two (y overlap): NMS must merge each pair into one box.
    assert tile_grid(300, 200, 128, 0.25).tolist() == [
        [0, 0],
        [96, 0],
        [172, 0],
        [0, 72],
        [96, 72],
        [172, 72],
    ]
    det = BrightBlobDetector()
    o = opts(Path("unused.pt"), tmp_path / "out", tile=128, tile_overlap=0.25, conf=0.5)
    predict(tmp_path / "in", o, detector=det)
    assert det.batch_sizes == [6]  # all tiles of the image in one batch
    got = sorted(
        tuple(float(r[k]) for k in ("x1", "y1", "x2", "y2"))
        for r in read_csv(tmp_path / "out" / "predictions.csv")
    )
    assert got == sorted(map(tuple, np.array(squares, dtype=float).tolist()))


class ColourBlobDetector:
    """Fake model over two classes: a box around each red blob (class 0) and each green blob
    (class 1) of each input, in model pixels, scored by its area (a cut-off part of an object
    scores lower than the whole). Keeps every box it returned in ``raw``."""

    image_size = 64

    def __init__(self) -> None:
        self.class_names = ["red", "green"]
        self.raw = 0

    def configure(self, settings: PostprocessSettings) -> None:
        self.settings = settings

    def __call__(self, batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in batch.numpy():
            red, green = img[0] > 127, img[1] > 127
            boxes, labels = [], []
            for label, mask in enumerate((red & ~green, green & ~red)):
                n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
                boxes += [[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:n]]
                labels += [label] * (n - 1)
            b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            self.raw += len(b)
            out.append({"boxes": b, "scores": 0.3 + area / 4096, "labels": torch.tensor(labels)})
        return out


#: (x1, y1, x2, y2, class) on a 300 x 200 image cut into 128 px tiles (stride 96: tiles start at
#: x 0, 96, 172 and y 0, 72). Even coordinates: the 2x downscale to the model keeps them exact.
TILED_OBJECTS = [
    (116, 20, 136, 40, "red"),  # cut by tile 1's right edge (x 128); whole in tile 2
    (60, 116, 80, 136, "green"),  # cut by the first row's bottom edge (y 128)
    (210, 30, 234, 50, "green"),  # cut by the second tile's right edge (x 224)
    (20, 20, 60, 60, "red"),  # a red frame around...
    (24, 24, 56, 56, "green"),  # ...a green square: IoU 0.64, kept apart by class-wise NMS
]


def draw_objects(path: Path, objects) -> None:
    bgr = {"red": (0, 0, 255), "green": (0, 255, 0), "black": (0, 0, 0)}
    img = np.zeros((200, 300, 3), dtype=np.uint8)
    for x1, y1, x2, y2, name in objects:  # in order: the green square paints over the frame
        img[y1:y2, x1:x2] = bgr[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def tiled_boxes(tmp_path: Path, objects, **options) -> tuple[list[tuple], ColourBlobDetector]:
    draw_objects(tmp_path / "in" / "big.png", objects)
    det = ColourBlobDetector()
    tiles = {"tile": 128, "tile_overlap": 0.25, "conf": 0.3}
    predict(tmp_path / "in", opts(Path("unused.pt"), tmp_path / "out", **tiles, **options), det)
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    got = [(*(float(r[k]) for k in ("x1", "y1", "x2", "y2")), r["class"]) for r in rows]
    return sorted(got), det


def test_tiles_merge_objects_of_two_classes_cut_by_tile_edges(tmp_path: Path) -> None:
    """Each object comes back once, with its class and exact box, although tiles saw parts of
    it (more boxes came out of the model than there are objects)."""
    got, det = tiled_boxes(tmp_path, TILED_OBJECTS)
    assert got == sorted(TILED_OBJECTS)
    assert det.raw == len(TILED_OBJECTS) + 3  # three objects seen whole and in part


def test_tiled_max_det_keeps_the_best_boxes_of_the_image(tmp_path: Path) -> None:
    got, _ = tiled_boxes(tmp_path / "three", TILED_OBJECTS, max_det=3)
    assert got == sorted(TILED_OBJECTS[2:])  # the three largest: the highest scores


def test_tiles_merge_an_object_mostly_outside_one_tile(tmp_path: Path) -> None:
    """Tile 1 (x < 128) sees 8 of its 20 px: IoU 0.4 with the whole box, which NMS alone keeps
    as a second object."""
    obj = (120, 150, 140, 170, "red")
    got, det = tiled_boxes(tmp_path, [obj])
    assert got == [obj]
    assert det.raw == 2


def test_tiles_join_an_object_no_tile_sees_whole(tmp_path: Path) -> None:
    """Three tiles each see part of a 160 px long object (tiles are 128 px): one box, its whole
    extent."""
    obj = (40, 150, 200, 170, "red")
    got, det = tiled_boxes(tmp_path, [obj])
    assert got == [obj]
    assert det.raw == 3


def test_tiles_join_an_object_at_the_corner_of_four_tiles(tmp_path: Path) -> None:
    """Each of the four tiles around x 96-128, y 72-128 sees one corner of it."""
    obj = (80, 60, 150, 140, "green")
    got, det = tiled_boxes(tmp_path, [obj])
    assert got == [obj]
    assert det.raw == 4


def test_tiles_keep_a_defect_inside_a_larger_one_cut_by_a_tile_edge(tmp_path: Path) -> None:
    """A red square inside a red frame, both cut by tile 1's right edge: each object once,
    the square not swallowed by the frame (it lies wholly inside it)."""
    frame, square = (100, 20, 140, 60, "red"), (110, 30, 130, 50, "red")
    got, det = tiled_boxes(tmp_path, [frame, (104, 24, 136, 56, "black"), square])
    assert got == sorted([frame, square])
    assert det.raw == 4


def test_letterbox_maps_back_without_tiles(tmp_path: Path) -> None:
    img = np.zeros((150, 300, 3), dtype=np.uint8)
    img[60:90, 150:210] = 255
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "wide.png"), img)
    predict(
        tmp_path / "in", opts(Path("unused.pt"), tmp_path / "out"), detector=BrightBlobDetector()
    )
    (row,) = read_csv(tmp_path / "out" / "predictions.csv")
    box = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
    assert box == pytest.approx([150, 60, 210, 90], abs=300 / 64 + 0.01)  # one model pixel


# ---------------------------------------------------------------------------- images, CLI
def test_save_images_keeps_folders_and_avoids_collisions(tmp_path: Path, weights: Path) -> None:
    write_images(tmp_path / "x", 1)
    write_images(tmp_path / "y", 1)
    write_images(tmp_path / "lists" / "sub", 1)
    listing = tmp_path / "lists" / "files.txt"
    listing.write_text("../x/000.png\n../y/000.png\nsub/000.png\n")  # two outside: same names
    predict(listing, opts(weights, tmp_path / "out", save_images=True, conf=0.3))
    saved = sorted(
        p.relative_to(tmp_path / "out" / "images").as_posix()
        for p in (tmp_path / "out" / "images").rglob("*.png")
    )
    assert saved == ["000.png", "000_2.png", "sub/000.png"]
    assert cv2.imread(str(tmp_path / "out" / "images" / "sub" / "000.png")).shape == (72, 96, 3)


def test_cli_predict_json_and_exit_codes(tmp_path: Path, weights: Path) -> None:
    write_images(tmp_path / "in", 2)
    runner = CliRunner()
    args = [
        "predict",
        str(tmp_path / "in"),
        "-w",
        str(weights),
        "--out",
        str(tmp_path / "o"),
        "--workers",
        "0",
        "--device",
        "cpu",
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 2 and summary["out"] == str(tmp_path / "o")
    again = runner.invoke(app, args)
    assert again.exit_code == 4 and "already holds predictions" in " ".join(again.stderr.split())
    bad = runner.invoke(app, [*args[:-1], "--exist-ok", "--class-conf", "zz=0.1"])
    assert bad.exit_code == 2 and "unknown class 'zz'" in bad.stderr
