"""engine/inference/tile_merge: tile cores and joining parts, below the predict-level tests of
tests/test_predict.py (which run the whole merge on drawn objects)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from defectdet.data.preprocess import tile_grid
from defectdet.engine.inference.tile_merge import (
    core_rects,
    cut_by_inner_edge,
    join_parts,
    owned,
    tile_rects,
)


def grid_rects(width: int, height: int, tile: int, overlap: float) -> torch.Tensor:
    offsets = torch.as_tensor(tile_grid(width, height, tile, overlap), dtype=torch.float32)
    return tile_rects(offsets, tile, width, height)


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(20, 400),
    height=st.integers(20, 400),
    tile=st.integers(32, 256),
    overlap=st.sampled_from([0.0, 0.1, 0.2, 0.5]),
)
def test_cores_split_the_image_between_tiles(
    width: int, height: int, tile: int, overlap: float
) -> None:
    """The cores lie in their tiles, do not overlap and cover the image."""
    rects = grid_rects(width, height, tile, overlap)
    cores = core_rects(rects)
    assert ((cores[:, :2] >= rects[:, :2]) & (cores[:, 2:] <= rects[:, 2:])).all()
    lt = torch.max(cores[:, None, :2], cores[None, :, :2])
    rb = torch.min(cores[:, None, 2:], cores[None, :, 2:])
    shared = (rb - lt).clamp(min=0).prod(dim=2).fill_diagonal_(0)
    assert shared.max() == 0
    assert (cores[:, 2:] - cores[:, :2]).prod(dim=1).sum() == width * height


def test_a_tile_owns_what_it_sees_farthest_from_an_inner_edge() -> None:
    rects = grid_rects(300, 100, 128, 0.25)  # x starts 0, 96, 172: overlaps 96-128, 172-224
    cores = core_rects(rects)
    # Centre x 110: 18 px from tile 0's right edge, 14 px from tile 1's left edge.
    box = torch.tensor([[100.0, 10.0, 120.0, 30.0]])
    assert owned(box.repeat(3, 1), cores).tolist() == [True, False, False]


def test_parts_of_one_tile_are_never_joined() -> None:
    """Two cut boxes of one class from one tile (two defects the model told apart) stay two."""
    rects = grid_rects(300, 100, 128, 0.25)
    boxes = torch.tensor([[100.0, 10.0, 128.0, 40.0], [104.0, 20.0, 128.0, 50.0]])
    tiles = torch.tensor([0, 0])
    cut = cut_by_inner_edge(boxes, rects[tiles], 300, 100, 2.0)
    assert cut.tolist() == [True, True]
    keep, _ = join_parts(boxes, torch.tensor([0, 0]), tiles, rects, cut, 2.0)
    assert keep.tolist() == [0, 1]


def test_parts_join_only_when_each_reaches_beyond_the_other_tile() -> None:
    """Tile 0 sees x 60-128 of an object, tile 1 sees x 96-170: one box, 60-170. A box of tile 1
    that stays inside tile 0's area (it ends at 126) is another object's view, not a part."""
    rects = grid_rects(300, 100, 128, 0.25)
    left = torch.tensor([60.0, 10.0, 128.0, 40.0])
    for right, joined in (([96.0, 10.0, 170.0, 40.0], True), ([96.0, 10.0, 126.0, 40.0], False)):
        boxes = torch.stack([left, torch.tensor(right)])
        tiles = torch.tensor([0, 1])
        cut = cut_by_inner_edge(boxes, rects[tiles], 300, 100, 2.0)
        keep, out = join_parts(boxes, torch.tensor([0, 0]), tiles, rects, cut, 2.0)
        if joined:
            assert keep.tolist() == [0] and out.tolist() == [[60.0, 10.0, 170.0, 40.0]]
        else:
            assert keep.tolist() == [0, 1] and torch.equal(out, boxes)
