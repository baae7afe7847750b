"""The typed configuration: one schema of options (:mod:`.options`, checked by :mod:`.schema`)
shared by the CLI, YAML files, ``compare`` variants and resumed runs.

``load_config`` reads a YAML file; ``apply`` sets options on a config (from the CLI or a
variant); ``validate`` checks every value once, before any data is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defectdet.config.checks import SELECT_LAST
from defectdet.config.commands import CalibrateRunConfig, PredictConfig
from defectdet.config.files import load_yaml, safe_yaml, to_yaml
from defectdet.config.inference import (
    DEFAULT_CONF,
    CalibrateConfig,
    InferConfig,
    RuntimeConfig,
    TileConfig,
)
from defectdet.config.options import (
    AugmentConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SamplerConfig,
    TrainConfig,
)
from defectdet.config.presets import PRESETS, pick_preset, resolve_preset
from defectdet.config.schema import (
    Option,
    Spec,
    apply,
    from_dict,
    given_names,
    options,
    to_dict,
    validate,
)
from defectdet.errors import ConfigError

__all__ = [
    "DEFAULT_CONF",
    "PRESETS",
    "SELECT_LAST",
    "AugmentConfig",
    "CalibrateConfig",
    "CalibrateRunConfig",
    "DataConfig",
    "InferConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "Option",
    "PredictConfig",
    "RunConfig",
    "RuntimeConfig",
    "SamplerConfig",
    "Spec",
    "TileConfig",
    "TrainConfig",
    "apply",
    "config_names",
    "from_dict",
    "given_names",
    "load_config",
    "load_yaml",
    "options",
    "pick_preset",
    "resolve_preset",
    "safe_yaml",
    "to_dict",
    "to_yaml",
    "train_config",
    "upgrade",
    "validate",
]

# Keys of configs saved by defectdet 0.1, read on resume: renamed options, and values derived
# from the data (now in the resolved spec) that are dropped.
_RENAMED = {
    ("augment", "preset"): "augment",
    ("augment", "minority"): "augment_minority",
    ("run", "conf"): "conf",
}
_DERIVED = {
    "model": (
        "anchor_sizes",
        "aspect_ratios",
        "num_classes",
        "class_names",
        "score_thresh",
        "nms_thresh",
        "detections_per_img",
    ),
    "loss": ("class_weight_values",),
}


def upgrade(data: Any) -> Any:
    """A config mapping in today's keys (configs written by 0.1 renamed some; see above)."""
    if not isinstance(data, dict):
        return data  # from_dict names the problem
    out: dict[str, Any] = {}
    for section, body in data.items():
        if not isinstance(body, dict):
            out[section] = body
            continue
        body = dict(body)
        for key in _DERIVED.get(section, ()):
            body.pop(key, None)
        if section == "model" and ("min_level" in body or "max_level" in body):
            body["levels"] = f"{body.pop('min_level', 3)}-{body.pop('max_level', 7)}"
        for (sec, old), new in _RENAMED.items():
            if sec == section and old in body:
                value = body.pop(old)
                target = "infer" if new == "conf" else section
                out.setdefault(target, {})[new] = value
        out.setdefault(section, {}).update(body)
    model = out.get("model")
    if isinstance(model, dict) and {"backbone", "fpn_channels"} <= model.keys():
        # A whole saved model section from before presets: its values are the recipe.
        model.setdefault("preset", "none")
    return out


def train_config(data: dict[str, Any] | None = None, where: str = "") -> TrainConfig:
    """A validated :class:`TrainConfig` from a (saved, sectioned or flat) mapping."""
    return validate(from_dict(TrainConfig, upgrade(data or {}), where))


def config_names(path: str | Path | None) -> set[str]:
    """The option names a YAML config file sets (empty without a file)."""
    if not path:
        return set()
    data = upgrade(load_yaml(path))
    return given_names(TrainConfig, data) if isinstance(data, dict) else set()


def load_config(path: str | Path | None = None) -> TrainConfig:
    """Defaults, with a YAML file (sections data/model/loss/... or flat keys) on top. Not yet
    validated: CLI options may still override it."""
    if not path:
        return TrainConfig()
    try:
        return from_dict(TrainConfig, upgrade(load_yaml(path)))
    except ConfigError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {exc}") from None
