"""Presets: named recipes that set the model, input size rule, optimiser and augmentation
together (in the manner of Ultralytics' n/s/m/l). A preset only fills options the user did not
give: an explicit option (command line, YAML, ``compare`` variant) always wins.

``auto`` (the default) picks by device (n on CPU, m on a GPU); the resolved name is what the run's
``config.yaml`` records, together with the values the preset filled in, so reusing that file
gives the same run on any machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from defectdet.config.schema import apply, values


@dataclass(frozen=True)
class Preset:
    """One recipe: ``values`` are flat option names (as on the command line, with ``_``)."""

    name: str
    summary: str
    values: dict[str, Any]


_CPU_OPTIM = {"optimizer": "adamw", "lr": 0.001, "batch_size": 16, "warmup_iters": 50}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "n",
            "nano: CPU default: narrow head on P3-P5, input ≤ 320 px",
            {
                "backbone": "resnet18",
                "fpn_channels": 64,
                "head_convs": 2,
                "levels": "3-5",
                "max_image_size": 320,
                "anchors": "auto",
                "augment": "light",
                **_CPU_OPTIM,
            },
        ),
        Preset(
            "s",
            "small: the nano network at input ≤ 512 px (on CPU n did better at 30 and 61 min)",
            {
                "backbone": "resnet18",
                "fpn_channels": 64,
                "head_convs": 2,
                "levels": "3-5",
                "max_image_size": 512,
                "anchors": "auto",
                "augment": "light",
                **_CPU_OPTIM,
            },
        ),
        Preset(
            "m",
            "medium: GPU default: resnet34, 128-channel 3-conv head on P3-P6, input ≤ 800 px",
            {
                "backbone": "resnet34",
                "fpn_channels": 128,
                "head_convs": 3,
                "levels": "3-6",
                "max_image_size": 800,
                "anchors": "auto",
                "augment": "medium",
                "optimizer": "adamw",
                "lr": 0.001,
                "batch_size": 16,
                "warmup_iters": 100,
            },
        ),
        Preset(
            "l",
            "large: torchvision's RetinaNet (resnet50, 256-channel 4-conv head, P3-P7), "
            "input ≤ 1024 px, SGD",
            {
                "backbone": "resnet50",
                "fpn_channels": 256,
                "head_convs": 4,
                "levels": "3-7",
                "max_image_size": 1024,
                "anchors": "auto",
                "augment": "medium",
                "optimizer": "sgd",
                "lr": 0.01,
                "batch_size": 8,
                "warmup_iters": 100,
            },
        ),
    )
}
PRESET_CHOICES = ("auto", "none", *PRESETS)


def pick_preset(cuda: bool) -> str:
    """The preset ``auto`` stands for: ``m`` on a GPU, ``n`` on CPU whatever the budget.

    On DeepPCB made imbalanced, n at 320 px (with the P2 level ``analyze`` then advises) beat s
    at 512 px at 30 CPU-minutes (0.34-0.45 mean per-class AP50 against 0.16-0.19) and at 61
    (0.597 / 0.529 against 0.406 / 0.362, two seeds): on CPU the extra steps buy more than the
    larger input (docs/benchmarks.md)."""
    return "m" if cuda else "n"


def resolve_preset(cfg: Any, given: Iterable[str] | None, cuda: bool) -> Any:
    """``cfg`` with its preset resolved (``auto`` -> a name) and the preset's values set on every
    option not in ``given`` (the names the user set); ``none`` keeps the plain defaults.

    ``given=None`` is the Python API, where nothing says which values were typed: a config built
    there is taken as it stands (``auto`` means ``none``), and with a named preset the options
    still at their plain default count as not given."""
    name = cfg.model.preset
    if name == "auto" and given is None:
        name = "none"
    elif name == "auto":  # COCO weights exist for one architecture only: l's
        name = "l" if cfg.model.weights == "coco" else pick_preset(cuda)
    if given is None:
        given = {o.name for o, v in values(cfg) if v != o.default}
    given = set(given)
    fill = {} if name == "none" else PRESETS[name].values
    return apply(cfg, {"preset": name, **{k: v for k, v in fill.items() if k not in given}})
