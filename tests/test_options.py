"""One option schema: the CLI is generated from it, and a wrong value is refused the same way
(exit 2, the option and its allowed values named, before any data is read) whichever way it
arrives: command line, YAML file, compare variant or grid, resumed run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from defectdet.cli import app
from defectdet.config import (
    DEFAULT_CONF,
    PredictConfig,
    TrainConfig,
    apply,
    from_dict,
    load_config,
    options,
    to_dict,
    train_config,
    validate,
)
from defectdet.errors import ConfigError
from defectdet.model import load_checkpoint, save_checkpoint

runner = CliRunner()

BAD_VALUES = [  # option, bad value, words of the allowed values
    ("gamma", -1.0, "≥ 0"),
    ("loss", "hinge", "focal, ce"),
    ("select_metric", "bogus", "mean_class_ap50"),
    ("background_fraction", 1.5, "≥ 0 and ≤ 1"),
    ("levels", "3-9", "LOW-HIGH"),
    ("image_size", 70, "multiple of 32"),
    ("class_weights", "loud", "effective[:BETA]"),
    ("conf", 1.5, "≤ 1"),
    ("class_conf", "crack=2", "0 ≤ T ≤ 1"),
    ("device", "tpu", "cuda:N"),
    ("workers", -2, "≥ -1"),
    ("epochs", 0, "≥ 1"),
]


def _help(command: str) -> str:
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    return " ".join(result.output.replace("│", " ").split())  # read across the panel's lines


def test_every_option_is_on_the_cli_with_its_help_and_default() -> None:
    text = _help("train")
    for name, option in options(TrainConfig).items():
        if not option.spec.cli:
            continue
        assert option.cli in text, name
        first_words = " ".join(option.spec.help.split()[:3])
        assert first_words in text, (name, first_words)
    assert "else 0.25" in text and "[default: mean_class_ap50]" in text
    compare = _help("compare")
    for name in ("gamma", "sampler", "copy_paste", "conf", "levels"):
        assert options(TrainConfig)[name].cli in compare  # compare takes every train option
    for command in ("predict", "evaluate"):
        text = _help(command)
        for option in options(PredictConfig).values():
            assert option.cli in text, (command, option.name)


def test_one_default_per_inference_option() -> None:
    train, predict = TrainConfig().infer, PredictConfig().infer
    # None: the checkpoint's calibrated thresholds, else DEFAULT_CONF (one rule, one place).
    assert train == predict and train.conf is None and DEFAULT_CONF == 0.25
    assert TrainConfig().runtime().batch_size == PredictConfig().runtime.batch_size


@pytest.mark.parametrize(("name", "value", "allowed"), BAD_VALUES)
def test_wrong_values_name_the_option_and_the_allowed_values(name, value, allowed) -> None:
    cfg = apply(PredictConfig() if name in options(PredictConfig) else TrainConfig(), {name: value})
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert "--" + name.replace("_", "-") in message and allowed in message, message


def _cli_value(value) -> str:
    return str(int(value) if isinstance(value, float) and value.is_integer() else value)


@pytest.mark.parametrize(("name", "value", "allowed"), BAD_VALUES[:7])
def test_train_cli_refuses_before_reading_the_data(tmp_path: Path, name, value, allowed) -> None:
    missing = tmp_path / "no-such-data"  # reading it would be a different error
    result = runner.invoke(app, ["train", str(missing), f"--{name.replace('_', '-')}", str(value)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"--{name.replace('_', '-')}" in text and allowed in text and "no such" not in text


def test_yaml_grid_and_variant_values_are_checked_the_same_way(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("loss:\n  gamma: -2\n")
    res = runner.invoke(app, ["train", str(tmp_path / "none"), "--config", str(config)])
    assert res.exit_code == 2 and "--gamma" in res.output and "≥ 0" in res.output
    flat = tmp_path / "flat.yaml"
    flat.write_text("gamma: 1.5\nsampler: repeat-factor\n")  # flat keys work too
    loaded = load_config(flat)
    assert loaded.loss.gamma == 1.5 and loaded.sampler.sampler == "repeat-factor"
    grid = tmp_path / "grid.yaml"
    grid.write_text("base:\n  epochs: 1\nvariants:\n  - loss=ce\n  - background_fraction=2\n")
    res = runner.invoke(app, ["compare", str(tmp_path / "none"), "--grid", str(grid)])
    assert res.exit_code == 2 and "--background-fraction" in res.output
    res = runner.invoke(app, ["compare", str(tmp_path / "none"), "--runs", "select_metric=x"])
    assert res.exit_code == 2 and "--select-metric" in res.output
    res = runner.invoke(
        app, ["compare", str(tmp_path / "none"), "--runs", "loss=ce", "--gamma", "-1"]
    )
    assert res.exit_code == 2 and "--gamma" in res.output
    res = runner.invoke(app, ["predict", str(tmp_path), "-w", "x.pt", "--iou", "0"])
    assert res.exit_code == 2 and "--iou" in res.output and "> 0" in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "none"), "-w", "x.pt", "--tile", "8"])
    assert res.exit_code == 2 and "--tile" in res.output and "no such" not in res.output


def test_resume_checks_the_saved_options(tmp_path: Path) -> None:
    saved = to_dict(TrainConfig())
    saved["run"]["select_metric"] = "bogus"  # a hand-edited or foreign checkpoint
    run = tmp_path / "run"
    save_checkpoint(
        run / "weights" / "last.pt",
        {"model": {"w": torch.zeros(1)}, "config": saved, "optimizer": {}, "state": {}},
    )
    res = runner.invoke(app, ["train", "--resume", str(run)])
    assert res.exit_code == 2 and "--select-metric" in " ".join(res.output.split())
    again = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "3"])
    assert again.exit_code == 2 and "own saved options" in " ".join(again.output.split())
    assert load_checkpoint(run / "weights" / "last.pt")["config"] == saved  # untouched


def test_unknown_keys_and_types_are_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) gama in TrainConfig"):
        from_dict(TrainConfig, {"gama": 2})
    with pytest.raises(ConfigError, match=r"loss\.gamma: expected a number"):
        from_dict(TrainConfig, {"loss": {"gamma": "high"}}, "run.yaml")


def test_configs_of_version_0_1_still_load() -> None:
    old = {
        "model": {"min_level": 3, "max_level": 5, "num_classes": 2, "class_names": ["a", "b"]},
        "augment": {"preset": "medium", "minority": True},
        "run": {"conf": 0.3},
        "loss": {"class_weight_values": [1.0, 2.0]},
    }
    cfg = train_config(old)
    assert cfg.model.levels == "3-5" and cfg.augment.augment == "medium"
    assert cfg.augment.augment_minority and cfg.infer.conf == 0.3


def test_cli_names_equal_yaml_and_compare_keys() -> None:
    text = _help("train")
    on_cli = set(re.findall(r"--([a-z0-9-]+)", text))
    for name, option in options(TrainConfig).items():
        if option.spec.cli:
            assert name.replace("_", "-") in on_cli
            assert option.cli == "--" + name.replace("_", "-")
