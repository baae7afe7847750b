"""defectdet compare: variant parsing, same budget/split/seed, skip finished, resume partial."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from defectdet.data.formats import load_dataset
from defectdet.engine.compare import run as cmp
from defectdet.errors import ConfigError
from defectdet.model import load_checkpoint
from test_train import make_easy_dataset, tiny_config


def test_parse_variant_maps_short_names_and_types():
    v = cmp.parse_variant("loss=focal, gamma=0.5,class-weights=effective:0.99,copy_paste=0.3")
    assert v.updates == {
        "loss": "focal",
        "gamma": 0.5,
        "class_weights": "effective:0.99",
        "copy_paste": 0.3,
    }
    assert cmp.parse_variant("sampler=repeat-factor").updates == {"sampler": "repeat-factor"}
    with pytest.raises(ConfigError, match="not a train option"):
        cmp.parse_variant("lossy=ce")
    with pytest.raises(ConfigError, match="expected name=VALUE"):
        cmp.parse_variant("ce")


def test_every_variant_is_checked_before_anything_trains(tmp_path: Path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking every variant")

    monkeypatch.setattr(cmp, "_train_or_resume", no_training)
    variants = [cmp.parse_variant("loss=ce"), cmp.parse_variant("background_fraction=2")]
    base = tiny_config(tmp_path / "missing-data", tmp_path)
    with pytest.raises(ConfigError, match=r"background_fraction=2.*--background-fraction"):
        cmp.run_compare(base, variants, tmp_path / "study")
    with pytest.raises(ConfigError, match="--select-metric"):
        cmp.run_compare(base, [cmp.parse_variant("select_metric=bogus")], tmp_path / "s")


def test_grid_yaml(tmp_path: Path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base:\n  epochs: 3\n  image_size: 64\nvariants:\n  ce: {loss: ce}\n"
        "  focal2: {loss: focal, gamma: 2}\n"
    )
    base, variants = cmp.load_grid(grid)
    assert base == {"epochs": 3, "image_size": 64}
    assert [v.name for v in variants] == ["ce", "focal2"]
    assert variants[1].updates == {"loss": "focal", "gamma": 2}
    grid.write_text("variants:\n  baseline: {}\n  ce: {loss: ce}\n")  # {} = the base itself
    assert [v.updates for v in cmp.load_grid(grid)[1]] == [{}, {"loss": "ce"}]
    with pytest.raises(ConfigError, match="empty"):
        cmp.parse_variant(" ")  # on the command line a variant must change something


@pytest.mark.slow
def test_compare_trains_each_variant_once_and_writes_the_table(tmp_path: Path, monkeypatch):
    data = make_easy_dataset(tmp_path / "data")
    base = tiny_config(data, tmp_path, optim__epochs=1)
    variants = [cmp.parse_variant("loss=ce"), cmp.parse_variant("loss=focal,gamma=2")]
    study = tmp_path / "study"
    table = cmp.run_compare(base, variants, study)
    assert list(table["variant"]) == ["loss=ce", "loss=focal,gamma=2"]
    assert table[["map50", "mean_class_ap50", "rarest_ap50"]].notna().all().all()
    for variant, folder in (("loss=ce", "loss=ce"), ("loss=focal,gamma=2", "loss=focal+gamma=2")):
        seconds = pd.read_csv(study / folder / "metrics.csv")["seconds"].sum()
        row = table[table["variant"] == variant].iloc[0]
        assert row["train_minutes"] == pytest.approx(seconds / 60, abs=1e-3)
    on_disk = pd.read_csv(study / "compare.csv")
    assert list(on_disk["variant"]) == list(table["variant"])
    # Per class: one column per class, most frequent in train first, train/val instances shown.
    data_cat = load_dataset(data)
    train_counts = data_cat.split_subset("train").instance_counts()
    val_counts = data_cat.split_subset("val").instance_counts()
    order = sorted(range(len(train_counts)), key=lambda k: -train_counts[k])
    names = [data_cat.classes[k] for k in order]
    assert [c for c in on_disk.columns if c.startswith("ap50_")] == [f"ap50_{n}" for n in names]
    assert (table["rarest_class"] == names[-1]).all()
    assert table["map"].between(0, 1).all()
    row = table.iloc[0]
    assert row["rarest_ap50"] == row[f"ap50_{names[-1]}"]
    present = [row[f"ap50_{n}"] for n in names if pd.notna(row[f"ap50_{n}"])]
    assert row["mean_class_ap50"] == pytest.approx(sum(present) / len(present))
    md = (study / "compare.md").read_text()
    summary, per_class = md.split("\n\n**")
    assert summary.count("\n") == 5 and f"AP50 rarest class ({names[-1]})" in summary
    cells = [f"{n} ({train_counts[k]}/{val_counts[k]})" for n, k in zip(names, order, strict=True)]
    head = f"| variant | {' | '.join(cells)} |"
    assert head + " mAP@[.5:.95] |" in per_class and per_class.count("\n") == 6
    assert (study / "compare.png").read_bytes()[:4] == b"\x89PNG"
    # Same seed and split, different loss: the saved configs differ only where asked.
    a = load_checkpoint(study / "loss=ce" / "weights" / "best.pt")["config"]
    b = load_checkpoint(study / "loss=focal+gamma=2" / "weights" / "best.pt")["config"]
    assert a["loss"]["loss"] == "ce" and b["loss"]["loss"] == "focal"
    assert a["run"]["seed"] == b["run"]["seed"] and a["optim"] == b["optim"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished variant was trained again")

    monkeypatch.setattr("defectdet.engine.train.loop.train", no_training)
    again = cmp.run_compare(base, variants, study)
    pd.testing.assert_frame_equal(again, table)


def test_a_failing_variant_is_recorded_and_the_others_go_on(tmp_path: Path, monkeypatch):
    from defectdet.config import TrainConfig
    from defectdet.engine.train.loop import TrainingDiverged

    def fake_train(cfg, run_dir):
        if cfg.loss.gamma == 0.5:
            raise TrainingDiverged("the loss became nan at epoch 1, step 24")
        return run_dir

    scores = {
        "map50": 0.4,
        "mean_class_ap50": 0.3,
        "rarest_ap50": 0.1,
        "recall_at_far": 0.5,
        "auroc": 0.9,
        "train_minutes": 1.0,
        "best_epoch": 3,
    }
    monkeypatch.setattr(cmp, "_train_or_resume", fake_train)
    monkeypatch.setattr(cmp, "_score", lambda run_dir, far: (scores, []))
    variants = [cmp.parse_variant("loss=focal,gamma=0.5"), cmp.parse_variant("loss=ce")]
    table = cmp.run_compare(TrainConfig(), variants, tmp_path / "study")
    assert table["status"].tolist() == ["failed: the loss became nan at epoch 1, step 24", "ok"]
    assert pd.isna(table.loc[0, "map50"]) and table.loc[1, "map50"] == 0.4
    assert "failed" in (tmp_path / "study" / "compare.md").read_text()
