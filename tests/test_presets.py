"""Presets: named recipes that fill only the options the user did not give, resolved by device
and budget, recorded in config.yaml; and analyze's advice, whose command names a preset and an
input size that train then uses."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from defectdet.cli import app
from defectdet.config import (
    PRESETS,
    TrainConfig,
    apply,
    config_names,
    load_yaml,
    pick_preset,
    resolve_preset,
    train_config,
    upgrade,
)
from defectdet.engine.compare.run import variant_configs
from defectdet.engine.compare.variants import parse_variant
from test_train import make_easy_dataset

runner = CliRunner()


def flat(cfg: TrainConfig) -> dict:
    return {k: v for section in vars(cfg).values() for k, v in vars(section).items()}


@pytest.mark.parametrize(
    ("cuda", "budget", "want"),
    [(False, 0, "n"), (False, 30, "n"), (False, 90, "n"), (True, 0, "m"), (True, 90, "m")],
)
def test_auto_picks_by_device_whatever_the_budget(cuda: bool, budget: float, want: str) -> None:
    assert pick_preset(cuda) == want
    cfg = resolve_preset(apply(TrainConfig(), {"time_budget": budget}), set(), cuda)
    assert cfg.model.preset == want
    values = flat(cfg)
    assert all(values[k] == v for k, v in PRESETS[want].values.items())


def test_explicit_options_win_even_at_the_plain_default() -> None:
    cfg = apply(TrainConfig(), {"preset": "n", "fpn_channels": 256, "optimizer": "sgd"})
    out = flat(resolve_preset(cfg, {"preset", "fpn_channels", "optimizer"}, cuda=False))
    assert out["fpn_channels"] == 256 and out["optimizer"] == "sgd"  # given: kept
    assert out["head_convs"] == 2 and out["max_image_size"] == 320  # not given: from n
    assert out["lr"] == PRESETS["n"].values["lr"]


def test_none_keeps_the_plain_defaults_and_coco_weights_mean_l() -> None:
    plain = TrainConfig()
    assert flat(resolve_preset(apply(plain, {"preset": "none"}), set(), False)) == {
        **flat(plain),
        "preset": "none",
    }
    coco = resolve_preset(apply(plain, {"weights": "coco"}), {"weights"}, cuda=False)
    assert coco.model.preset == "l" and coco.model.backbone == "resnet50"
    coco.cross_check()  # l is torchvision's architecture: COCO weights fit


def test_python_api_takes_a_config_as_it_stands() -> None:
    cfg = apply(TrainConfig(), {"fpn_channels": 32})
    assert flat(resolve_preset(cfg, None, cuda=False)) == {**flat(cfg), "preset": "none"}
    named = flat(resolve_preset(apply(cfg, {"preset": "s"}), None, cuda=False))
    assert named["fpn_channels"] == 32 and named["optimizer"] == "adamw"  # changed one kept


def test_resolving_twice_changes_nothing() -> None:
    once = resolve_preset(TrainConfig(), {"gamma"}, cuda=False)
    assert flat(resolve_preset(once, {"gamma"}, cuda=False)) == flat(once)


def test_saved_configs_from_before_presets_keep_their_recipe() -> None:
    old = {"model": {"backbone": "resnet18", "fpn_channels": 256, "head_convs": 4}}
    assert upgrade(old)["model"]["preset"] == "none"
    assert train_config(old).model.preset == "none"
    assert "preset" not in upgrade({"model": {"fpn_channels": 64}})["model"]  # a user's YAML


def test_compare_variants_resolve_their_own_preset(tmp_path: Path) -> None:
    base = apply(TrainConfig(), {"path": "d", "head_convs": 4})
    variants = [parse_variant("preset=n"), parse_variant("preset=m,fpn_channels=32")]
    (_, _, n), (_, _, m) = variant_configs(base, variants, tmp_path, given={"head_convs"})
    assert (n.model.preset, n.model.head_convs, n.model.fpn_channels) == ("n", 4, 64)
    assert (m.model.preset, m.model.head_convs, m.model.fpn_channels) == ("m", 4, 32)
    assert m.model.backbone == "resnet34"


def _train(tmp_path: Path, *args: str) -> Path:
    result = runner.invoke(app, ["train", *args, "--project", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    return run


TINY = ["--max-steps", "1", "--epochs", "1", "--augment", "none", "--workers", "0"]


@pytest.mark.slow
def test_train_records_the_preset_and_config_yaml_reproduces_it(tmp_path: Path) -> None:
    data = make_easy_dataset(tmp_path / "data")
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("model:\n  fpn_channels: 256\n")  # the plain default, but given
    run = _train(tmp_path, str(data), "--config", str(yaml_file), "--preset", "n", *TINY)
    saved = load_yaml(run / "config.yaml")
    assert saved["model"]["preset"] == "n"
    assert saved["model"]["fpn_channels"] == 256  # from the YAML: wins over n's 64
    assert saved["model"]["head_convs"] == 2 and saved["optim"]["optimizer"] == "adamw"
    assert load_yaml(run / "resolved.yaml")["model_spec"]["image_size"] == 64  # native, ≤ 320
    # The saved file names every option: reused, it is the same run whatever the preset rules.
    assert config_names(run / "config.yaml") >= set(PRESETS["n"].values)
    again = _train(tmp_path / "again", "--config", str(run / "config.yaml"))
    assert load_yaml(again / "config.yaml") | {"run": None} == saved | {"run": None}


@pytest.mark.slow
def test_analyze_advice_is_the_command_train_runs(tmp_path: Path) -> None:
    """The advised command, run as printed, trains with the preset and input size it names."""
    data = tmp_path / "data"
    synth = runner.invoke(
        app, ["synth", str(data), "--images", "60", "--size", "96", "--seed", "1"]
    )
    assert synth.exit_code == 0, synth.output
    result = runner.invoke(app, ["analyze", str(data), "--time-budget", "0.05", "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    recipe = report["recipe"]
    assert recipe["preset"] == pick_preset(False)  # this machine has no GPU in CI
    assert "--time-budget 0.05" in recipe["command"]
    assert any(recipe["command"] in line for line in report["advice"])
    argv = shlex.split(recipe["command"])
    assert argv[:2] == ["defectdet", "train"] and "--preset" in argv
    run = _train(tmp_path, *argv[2:], "--workers", "0")  # as printed: the budget ends it
    saved = load_yaml(run / "config.yaml")
    assert saved["model"]["preset"] == recipe["preset"] and saved["optim"]["time_budget"] == 0.05
    spec = load_yaml(run / "resolved.yaml")["model_spec"]
    assert spec["image_size"] == recipe["image_size"]
    if report["imbalance_ratio"] and report["imbalance_ratio"] >= 5:
        assert load_yaml(run / "config.yaml")["sampler"]["sampler"] == "repeat-factor"


def test_analyze_names_the_preset_asked_for(tmp_path: Path) -> None:
    data = make_easy_dataset(tmp_path / "data")
    result = runner.invoke(app, ["analyze", str(data), "--preset", "m", "--json", "-"])
    assert result.exit_code == 0, result.output
    recipe = json.loads(result.output)["recipe"]
    assert recipe["preset"] == "m" and "--preset m" in recipe["command"]
    assert "--time-budget" not in recipe["command"]
    bad = runner.invoke(app, ["analyze", str(data), "--preset", "xl"])
    assert bad.exit_code == 2 and "--preset" in bad.output and "traceback" not in bad.output.lower()


@pytest.mark.parametrize("budget", [20, 90])
def test_analyze_names_the_preset_train_picks_for_the_budget(tmp_path: Path, budget: int) -> None:
    data = make_easy_dataset(tmp_path / "data")
    result = runner.invoke(app, ["analyze", str(data), "--time-budget", str(budget), "--json", "-"])
    assert result.exit_code == 0, result.output
    recipe = json.loads(result.output)["recipe"]
    assert recipe["preset"] == pick_preset(False) and recipe["time_budget"] == budget
    assert f"--preset {recipe['preset']} --time-budget {budget}" in recipe["command"]


def test_analyze_rejects_a_negative_budget_as_train_does(tmp_path: Path) -> None:
    data = make_easy_dataset(tmp_path / "data")
    for command in ("analyze", "train"):
        bad = runner.invoke(app, [command, str(data), "--time-budget", "-1"])
        assert bad.exit_code == 2, bad.output
        assert "--time-budget" in bad.output and "traceback" not in bad.output.lower()


def test_every_preset_sets_the_same_options_and_help_shows_them() -> None:
    keys = {name: set(p.values) for name, p in PRESETS.items()}
    assert all(k == keys["s"] for k in keys.values())
    text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "by --preset: n 64 · s 64 · m 128 · l 256; none: 256" in text  # --fpn-channels
    words = " ".join(text.replace("│", " ").split())  # the help as read, across wrapped lines
    assert f"auto = {pick_preset(False)} on CPU" in words  # help says what runs
    predict = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200"}).output
    assert "--batch-size" in predict and "by --preset" not in predict  # not a train option there


def analysis_report(**changes) -> dict:
    """The keys of analyze's report that the recipe reads: balanced, few good parts."""
    base = {
        "root": "line",
        "negatives": {},
        "imbalance_ratio": 1.0,
        "classes": [],
        "background_share": 0.2,
        "num_images": 50,
        "suggested_image_size": 128,
        "repeat_threshold": 0.1,
    }
    return base | changes


def test_recipe_trains_on_native_tiles_when_shrinking_loses_the_boxes() -> None:
    from defectdet.analysis.recommend import SMALL_AT_INPUT, recipe

    report = analysis_report(suggested_image_size=2048)
    small = recipe(report, "n", 320, 16 / 2048)  # 16 px boxes would be 2.5 px at 320
    assert small["train_tile"] == 320 and small["median_box_px"] == 16.0
    assert "--train-tile 320" in small["command"]  # (and P2: 16 px is small even at native)
    big = recipe(report, "n", 320, 200 / 2048)  # 31 px at 320: whole images are fine
    assert big["train_tile"] == 0 and "--train-tile" not in big["command"]
    assert big["median_box_px"] == pytest.approx(200 * 320 / 2048, abs=0.1)
    assert big["median_box_px"] >= SMALL_AT_INPUT


def test_recipe_adds_the_p2_level_for_boxes_small_at_the_input() -> None:
    from defectdet.analysis.recommend import P2_BELOW, recipe

    report = analysis_report(suggested_image_size=128)
    small = recipe(report, "s", 128, (P2_BELOW - 4) / 128)
    assert small["levels"] == "2-5" and "--levels 2-5 --head v2" in small["command"]
    assert recipe(report, "m", 128, (P2_BELOW - 4) / 128)["levels"] == "2-6"  # m's top level
    assert recipe(report, "s", 128, (P2_BELOW + 4) / 128)["levels"] == ""
