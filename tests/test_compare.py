"""defectdet compare: variant parsing, same budget/split/seed, skip finished, resume partial."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from defectdet.data.formats import load_dataset
from defectdet.engine.compare import run as cmp
from defectdet.engine.compare.table import seed_verdict, seed_views
from defectdet.engine.compare.variants import (
    Variant,
    load_grid,
    parse_seeds,
    parse_variant,
    with_seeds,
)
from defectdet.errors import ConfigError
from defectdet.model import load_checkpoint
from test_train import make_easy_dataset, tiny_config


def test_parse_variant_maps_short_names_and_types():
    v = parse_variant("loss=focal, gamma=0.5,class-weights=effective:0.99,copy_paste=0.3")
    assert v.updates == {
        "loss": "focal",
        "gamma": 0.5,
        "class_weights": "effective:0.99",
        "copy_paste": 0.3,
    }
    assert parse_variant("sampler=repeat-factor").updates == {"sampler": "repeat-factor"}
    with pytest.raises(ConfigError, match="not a train option"):
        parse_variant("lossy=ce")
    with pytest.raises(ConfigError, match="expected name=VALUE"):
        parse_variant("ce")


def test_every_variant_is_checked_before_anything_trains(tmp_path: Path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking every variant")

    monkeypatch.setattr(cmp, "_train_or_resume", no_training)
    variants = [parse_variant("loss=ce"), parse_variant("background_fraction=2")]
    base = tiny_config(tmp_path / "missing-data", tmp_path)
    with pytest.raises(ConfigError, match=r"background_fraction=2.*--background-fraction"):
        cmp.run_compare(base, variants, tmp_path / "study")
    with pytest.raises(ConfigError, match="--select-metric"):
        cmp.run_compare(base, [parse_variant("select_metric=bogus")], tmp_path / "s")


def test_grid_yaml(tmp_path: Path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base:\n  epochs: 3\n  image_size: 64\nvariants:\n  ce: {loss: ce}\n"
        "  focal2: {loss: focal, gamma: 2}\n"
    )
    base, variants = load_grid(grid)
    assert base == {"epochs": 3, "image_size": 64}
    assert [v.name for v in variants] == ["ce", "focal2"]
    assert variants[1].updates == {"loss": "focal", "gamma": 2}
    grid.write_text("variants:\n  baseline: {}\n  ce: {loss: ce}\n")  # {} = the base itself
    assert [v.updates for v in load_grid(grid)[1]] == [{}, {"loss": "ce"}]
    with pytest.raises(ConfigError, match="empty"):
        parse_variant(" ")  # on the command line a variant must change something


@pytest.mark.slow
def test_compare_trains_each_variant_once_and_writes_the_table(tmp_path: Path, monkeypatch):
    data = make_easy_dataset(tmp_path / "data")
    base = tiny_config(data, tmp_path, optim__epochs=1)
    variants = [parse_variant("loss=ce"), parse_variant("loss=focal,gamma=2")]
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
    variants = [parse_variant("loss=focal,gamma=0.5"), parse_variant("loss=ce")]
    table = cmp.run_compare(TrainConfig(), variants, tmp_path / "study")
    assert table["status"].tolist() == ["failed: the loss became nan at epoch 1, step 24", "ok"]
    assert pd.isna(table.loc[0, "map50"]) and table.loc[1, "map50"] == 0.4
    assert "failed" in (tmp_path / "study" / "compare.md").read_text()


def test_parse_seeds_takes_lists_and_ranges_and_refuses_one_seed():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds(" 3-5 ") == [3, 4, 5]
    assert parse_seeds("7, 2") == [7, 2]
    for bad in ("3", "0,0", "a,b", "-1,2", "2-2", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_with_seeds_repeats_every_variant_seed_major():
    variants = [parse_variant("loss=ce"), Variant("base", {})]
    seeded = with_seeds(variants, [4, 9])
    assert [v.name for v in seeded] == [
        "loss=ce seed=4",
        "base seed=4",
        "loss=ce seed=9",
        "base seed=9",
    ]
    assert seeded[2].updates == {"loss": "ce", "seed": 9} and seeded[1].updates == {"seed": 4}
    assert [v.group for v in seeded] == ["loss=ce", "base", "loss=ce", "base"]
    assert variants[0].updates == {"loss": "ce"}  # the originals are untouched
    with pytest.raises(ConfigError, match="sets seed"):
        with_seeds([parse_variant("loss=ce,seed=3")], [0, 1])


def test_seeds_give_each_variant_its_mean_and_range(tmp_path: Path, monkeypatch):
    """Scores that depend on the loss and the seed; the loss=ce seed 2 run fails, so its
    variant's figures rest on one seed."""
    from defectdet.config import TrainConfig
    from defectdet.engine.train.loop import TrainingDiverged

    seen = []

    def fake_train(cfg, run_dir):
        seen.append((cfg.loss.loss, cfg.run.seed))
        if cfg.loss.loss == "ce" and cfg.run.seed == 2:
            raise TrainingDiverged("the loss became nan")
        return run_dir

    def fake_score(run_dir, points):
        ce, seed = "loss=ce" in run_dir.name, int(run_dir.name.rsplit("=", 1)[1])
        k = (0.2 if ce else 0.5) + 0.1 * seed
        scores = {"pooled_ap50": k, "mean_class_ap50": k / 2, "far_at_recall": 1 - k}
        return scores | {"auroc": 0.9, "ap50_a": k / 4}, [cmp.ClassCount("a", 3, 1)]

    monkeypatch.setattr(cmp, "_train_or_resume", fake_train)
    monkeypatch.setattr(cmp, "_score", fake_score)
    variants = with_seeds([parse_variant("loss=ce"), parse_variant("loss=focal")], [0, 1, 2])
    study = tmp_path / "study"
    table = cmp.run_compare(TrainConfig(), variants, study)
    assert seen == [("ce", 0), ("focal", 0), ("ce", 1), ("focal", 1), ("ce", 2), ("focal", 2)]
    assert table["seed"].tolist() == [0, 0, 1, 1, 2, 2]
    assert table["group"].tolist() == ["loss=ce", "loss=focal"] * 3
    summary = pd.read_csv(study / "compare-seeds.csv")
    assert summary["variant"].tolist() == ["loss=ce", "loss=focal"]
    assert summary["seeds"].tolist() == [2, 3]  # the failed run is left out, not counted as 0
    ce, focal = summary.iloc[0], summary.iloc[1]
    assert ce["pooled_ap50_mean"] == pytest.approx(0.25)
    assert (ce["pooled_ap50_min"], ce["pooled_ap50_max"]) == pytest.approx((0.2, 0.3))
    assert focal["pooled_ap50_mean"] == pytest.approx(0.6)
    assert focal["pooled_ap50_sd"] == pytest.approx(0.1)
    assert focal["ap50_a_mean"] == pytest.approx(0.15)
    md = (study / "compare.md").read_text()
    assert "**summary across seeds: mean (min-max)**" in md
    line = next(x for x in md.splitlines() if x.startswith("| loss=focal | 3 |"))
    assert "0.600 (0.500-0.700)" in line and "0.400 (0.300-0.500)" in line  # far: 1 - k
    assert "AP50 per class across seeds" in md
    assert (  # focal's worst seed (0.25) beats ce's best (0.15)
        "loss=focal leads on mean per-class AP50 over its seeds (mean 0.300), and its lowest "
        "seed (0.250) is above every other variant's highest" in md
    )
    assert (study / "compare.png").read_bytes()[:4] == b"\x89PNG"
    views = seed_views(table, cmp.TablePoints())
    best = {(row[0].text, i) for row in views[0].rows for i, c in enumerate(row) if c.best}
    far = views[0].headers.index("false alarms @ 90% defect recall")
    assert ("loss=focal", far) in best and ("loss=ce", far) not in best  # lower is better


def test_cli_refuses_seed_with_seeds_and_a_single_seed(tmp_path: Path):
    from typer.testing import CliRunner

    from defectdet.cli import app

    runner = CliRunner()
    args = ["compare", str(tmp_path), "--runs", "loss=ce", "--project", str(tmp_path)]
    both = runner.invoke(app, [*args, "--seed", "1", "--seeds", "0,1"])
    assert both.exit_code == 2 and "--seed or --seeds" in both.output
    one = runner.invoke(app, [*args, "--seeds", "3"])
    assert one.exit_code == 2 and "two or more distinct seeds" in one.output
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_seed_verdict_says_when_a_lead_is_inside_the_spread():
    def table(rows):
        cols = ["variant", "group", "seed", "status", "mean_class_ap50"]
        return pd.DataFrame([dict(zip(cols, r, strict=True)) for r in rows])

    overlapping = table(
        [
            ("a s0", "a", 0, "ok", 0.40),
            ("b s0", "b", 0, "ok", 0.45),
            ("a s1", "a", 1, "ok", 0.30),
            ("b s1", "b", 1, "ok", 0.35),
        ]
    )
    verdict = seed_verdict(overlapping)
    assert verdict.startswith("b leads on mean per-class AP50 over its seeds (mean 0.400)")
    assert "lowest seed (0.350) is not above the highest of a: a lead inside" in verdict
    one_run = table([("a s0", "a", 0, "ok", 0.4), ("b s0", "b", 0, "failed: nan", None)])
    assert seed_verdict(one_run) is None  # b has no score: nothing to compare a with
    one_run.loc[len(one_run)] = ["b s1", "b", 1, "ok", 0.5]
    assert "but on one finished run" in seed_verdict(one_run)
    assert seed_verdict(overlapping.drop(columns="group")) is None  # no --seeds
