"""Folders of good parts (``--negatives``): read like any dataset's images, counted, split and
evaluated as defect-free images."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from defectdet.cli import app
from defectdet.config import TrainConfig
from defectdet.data.formats import load_dataset
from defectdet.engine.train.setup import load_run_data
from detector_helpers import make_checkpoint, write_images
from test_train import make_easy_dataset

runner = CliRunner()


def good_parts(root: Path) -> Path:
    """3 good images (one nested), and the odd files a real folder holds."""
    folder = root / "good"
    write_images(folder, 2)
    write_images(folder / "line2", 1, seed=1)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    (folder / "readme.txt").write_text("ignored: not an image file")
    write_images(root / "elsewhere", 1)
    os.symlink(root / "elsewhere" / "000.png", folder / "escape.png")  # leaves the folder
    return folder


def test_negatives_are_checked_like_dataset_images(tmp_path: Path) -> None:
    data = make_easy_dataset(tmp_path / "data")
    folder = good_parts(tmp_path)
    cat = load_dataset(data, negatives=[folder])
    names = sorted(Path(f).name for f in cat.images["file_name"] if str(folder) in f)
    assert names == ["000.png", "000.png", "001.png"]  # two top-level, one nested
    problems = " ".join(str(p) for p in cat.problems)
    for bad in ("empty.png", "notes.png", "escape.png"):
        assert bad in problems
    assert "readme.txt" not in problems
    assert set(cat.negative_ids()) <= set(cat.images["image_id"])
    assert not cat.boxes["image_id"].isin(cat.negative_ids()).any()  # defect-free
    res = runner.invoke(app, ["analyze", str(data), "--negatives", str(folder), "--json", "-"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["negatives"] == {str(folder): 3}
    assert report["num_background_images"] == 2 * 2 + 3  # the data's own, twice (splits), +3
    strict = runner.invoke(app, ["analyze", str(data), "--negatives", str(folder), "--strict"])
    assert strict.exit_code == 2 and "empty.png" in strict.output
    missing = runner.invoke(app, ["analyze", str(data), "--negatives", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such folder" in missing.output


def test_negatives_are_split_like_other_defect_free_images(tmp_path: Path) -> None:
    data = make_easy_dataset(tmp_path / "data")  # has train and val splits
    folder = tmp_path / "good"
    write_images(folder, 10)
    cfg = TrainConfig()
    cfg.data.path, cfg.data.negatives, cfg.data.val_fraction = str(data), [str(folder)], 0.3
    run = load_run_data(cfg)
    neg = set(run.catalog.negative_ids())
    in_train = neg & set(run.train.images["image_id"])
    in_val = neg & set(run.val.images["image_id"])
    assert len(in_train) == 7 and len(in_val) == 3 and not in_train & in_val
    assert run.val.num_images == 8 + 3  # the data's own val split, plus its share of good parts


def test_evaluate_measures_false_alarms_on_good_parts(tmp_path: Path) -> None:
    data = make_easy_dataset(tmp_path / "data")
    folder = tmp_path / "good"
    write_images(folder, 6)
    weights = make_checkpoint(tmp_path / "w.pt", classes=("white", "black"))
    args = [
        "evaluate",
        str(data),
        "-w",
        str(weights),
        "--workers",
        "0",
        "--negatives",
        str(folder),
        "--json",
        "-",
    ]
    report = json.loads(runner.invoke(app, [*args, "--conf", "0.0"]).stdout)
    assert report["negatives"] == {
        str(folder): {"images": 6, "flagged": 6, "false_alarm_rate": 1.0}
    }
    assert report["metrics"]["image_level"]["ok_images"] == 2 + 6
    strict = json.loads(runner.invoke(app, [*args, "--conf", "1.0"]).stdout)
    assert strict["negatives"][str(folder)]["flagged"] == 0


def test_train_reports_the_good_parts_per_folder(tmp_path: Path) -> None:
    from conftest import TINY_MODEL_ARGS

    data = make_easy_dataset(tmp_path / "data")
    folder = tmp_path / "good"
    write_images(folder, 10)
    args = [
        "train",
        str(data),
        "--negatives",
        str(folder),
        "--project",
        str(tmp_path / "r"),
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        *TINY_MODEL_ARGS,
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"8 from --negatives {folder}" in " ".join(res.output.split())  # 80 % of 10 to train
