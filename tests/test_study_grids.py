"""The study grids under benchmarks/study record how docs/benchmarks.md measured each figure.

`--preset auto` changes its pick as measurements come in (it picked s above 60 CPU-minutes, then
n), so a grid that leaves the preset to auto silently measures something else once the rule
moves. Every grid must load, validate, and name the preset each variant was measured with."""

from __future__ import annotations

from pathlib import Path

import pytest

from defectdet.config import TrainConfig, apply
from defectdet.engine.compare.run import variant_configs
from defectdet.engine.compare.variants import load_grid

GRIDS = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "study").glob("*.yaml"))


def test_there_are_study_grids():
    assert len(GRIDS) >= 10


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: p.stem)
def test_study_grid_validates_and_pins_its_preset(grid: Path, tmp_path: Path):
    base, variants = load_grid(grid)
    named = [v.updates.get("preset", base.get("preset")) for v in variants]
    for variant, preset in zip(variants, named, strict=True):
        assert preset not in (None, "auto"), (
            f"{grid.name}: variant {variant.name!r} leaves the preset to auto; name the one it "
            "was measured with (preset: none for runs from before presets)"
        )
    cfg = apply(TrainConfig(), {**base, "path": str(tmp_path)}, str(grid))
    resolved = variant_configs(cfg, variants, tmp_path / "study", given=set(base))
    assert [c.model.preset for _, _, c in resolved] == named
