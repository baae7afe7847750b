"""What ``compare`` trains: variants from the command line or a YAML grid, each repeated once
per seed with ``--seeds``.

A variant is a comma-separated list of ``key=value`` over the train options, keys named as in
``config.yaml`` (``loss=focal,gamma=2``, ``sampler=repeat-factor``, ``class_weights=effective``;
dashes and underscores are the same).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from defectdet.config import TrainConfig, load_yaml, options
from defectdet.config.values import parse_pairs
from defectdet.errors import ConfigError


@dataclass
class Variant:
    """A named set of train options (flat names, as on the command line without ``--``);
    ``group``: with ``--seeds``, the variant this run is one seed of (else empty)."""

    name: str
    updates: dict[str, Any]
    group: str = ""


def parse_variant(text: str) -> Variant:
    """``"loss=focal,gamma=2"`` → Variant with ``{"loss": "focal", "gamma": 2}`` (values are
    read as YAML scalars)."""
    try:
        pairs = parse_pairs(text, f"variant {text!r}", "VALUE")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    values = {k: yaml.safe_load(v) if v else "" for k, v in pairs}
    return Variant(text.strip(), _updates(values, f"variant {text!r}"))


def _updates(pairs: dict[str, Any], where: str, empty_ok: bool = False) -> dict[str, Any]:
    """Option names checked against the schema (dashes and underscores are the same);
    ``empty_ok``: a named grid variant may change nothing (the base itself, as a baseline)."""
    table = options(TrainConfig)
    updates = {}
    for key, value in pairs.items():
        name = str(key).strip().replace("-", "_")
        if name not in table or name == "path":
            raise ConfigError(
                f"{where}: {key!r} is not a train option (e.g. loss, gamma, alpha, "
                "class_weights, sampler, background_fraction, copy_paste)"
            )
        updates[name] = value
    if not updates and not empty_ok:
        raise ConfigError(f"{where}: empty; give e.g. 'loss=ce'")
    return updates


def load_grid(path: str | Path) -> tuple[dict[str, Any], list[Variant]]:
    """A YAML grid: ``base:`` (train options, flat ``key: value``) and ``variants:`` (a list of
    ``key=value,...`` strings, or a mapping name → {key: value}, where ``{}`` is the base
    itself)."""
    data = load_yaml(path)
    base = _updates(data.get("base") or {"seed": 0}, f"{path}: base")
    raw = data.get("variants") or []
    if isinstance(raw, dict):
        variants = [
            Variant(str(name), _updates(opts or {}, f"{path}: {name}", empty_ok=True))
            for name, opts in raw.items()
        ]
    elif isinstance(raw, list):
        variants = [parse_variant(str(v)) for v in raw]
    else:
        raise ConfigError(f"{path}: 'variants' must be a list or a mapping")
    return base, variants


def slug(name: str) -> str:
    """A variant's folder name."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name.replace(",", "+")).strip("_") or "variant"


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: ``"0,1,2"`` or a range ``"0-2"`` → ``[0, 1, 2]``; at least two distinct
    non-negative seeds (one seed is ``--seed``)."""
    text = text.strip()
    try:
        if re.fullmatch(r"\d+\s*-\s*\d+", text):
            lo, hi = (int(p) for p in text.split("-"))
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(p) for p in text.split(",")]
    except ValueError:
        seeds = []
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(
            f"--seeds {text!r}: give two or more distinct seeds ≥ 0, e.g. 0,1,2 or 0-2 "
            "(one seed is --seed)"
        )
    return seeds


def with_seeds(variants: list[Variant], seeds: list[int]) -> list[Variant]:
    """Each variant once per seed, named ``"NAME seed=S"`` and grouped under NAME for the table
    across seeds. Seed-major: every variant's first seed trains before any second seed, so a
    study stopped early still holds one whole comparison."""
    for v in variants:
        if "seed" in v.updates:
            raise ConfigError(
                f"variant {v.name!r} sets seed; with --seeds every variant runs once per seed"
            )
    return [
        Variant(f"{v.name} seed={s}", {**v.updates, "seed": s}, group=v.name)
        for s in seeds
        for v in variants
    ]
