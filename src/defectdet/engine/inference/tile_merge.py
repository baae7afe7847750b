"""Merging the boxes of overlapping tiles into one box per object, in two steps before the
class-wise NMS at ``--iou``.

NMS alone fails at tile edges: a tile that sees only part of a defect returns a box whose IoU
with the whole one is small, so both stay and the defect is reported twice (or, longer than the
overlap, in pieces); and of two views the higher-scoring one stands, though a partial view
often scores higher and is boxed worse.

1. **Ownership** (:func:`core_rects`, :func:`owned`): each tile keeps only the boxes whose
   centre lies in its *core*, its area up to the middle of each overlap. The cores tile the
   image, so each object is reported by the one tile that sees it farthest from an inner
   edge, whole whenever it is no larger than the overlap, whatever the scores say.
2. **Joining parts** (:func:`join_parts`): an object that no tile sees whole leaves parts in
   several cores. Two boxes of one class from different tiles are parts of one object when
   both are *cut* (touch an edge of their tile inside the image, :func:`cut_by_inner_edge`),
   each reaches beyond the other's tile, and, clipped to the area both tiles see, they overlap
   with IoU of at least :data:`MATCH_IOU` (both tiles saw that area whole, so two views of one
   object agree there however little of it either saw). Their union is the object's box.

Measured on DeepPCB with a tile-trained model (docs/benchmarks.md, "Merging tiles"): the cores
lifted held-out mean per-class AP50 from 0.131 (NMS alone) to 0.143; merging by score instead (a
cut box and another tile's box as one object, the higher scorer's box kept, or the uncut one's)
did not help or lost AP, because near an edge a partial view often scored higher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from defectdet.engine.inference.preprocess import ImageMeta

#: IoU, within the area two tiles share, at which a cut box and the other tile's box are one
#: object.
MATCH_IOU = 0.5
#: How near (model pixels) a box edge must be to an inner tile edge to count as cut by it:
#: box regression rarely lands exactly on the border of what the model saw.
CUT_TOLERANCE_PX = 4.0


def merge_tile_views(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    tile_ids: torch.Tensor,
    meta: ImageMeta,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ownership, then joining parts (the module's two steps) for one tiled image.

    Args:
        boxes: (N, 4) xyxy in original pixels, from all the image's tiles.
        scores, labels, tile_ids: (N,) each; ``tile_ids`` index ``meta.offsets``.
        meta: the image's tiling (offsets, tile side, size, scale).

    Returns:
        ``keep`` (K,) indices into the input, in score order, and the (K, 4) boxes.
    """
    order = scores.argsort(descending=True)
    rects = tile_rects(torch.as_tensor(meta.offsets), meta.tile, meta.width, meta.height)
    mine = order[owned(boxes[order], core_rects(rects)[tile_ids[order]])]
    b, t = boxes[mine], tile_ids[mine]
    tolerance = CUT_TOLERANCE_PX / meta.scale
    cut = cut_by_inner_edge(b, rects[t], meta.width, meta.height, tolerance)
    keep, joined = join_parts(b, labels[mine], t, rects, cut, tolerance)
    return mine[keep], joined


def tile_rects(offsets: torch.Tensor, tile: float, width: int, height: int) -> torch.Tensor:
    """(T, 4) xyxy area of the image each tile sees, from (T, 2) top-left corners and the tile
    side (all original pixels)."""
    end = offsets + tile
    return torch.cat([offsets, end.minimum(torch.tensor([float(width), float(height)]))], dim=1)


def core_rects(rects: torch.Tensor) -> torch.Tensor:
    """(T, 4) xyxy *core* of each tile: its area up to the middle of each overlap with a
    neighbouring tile. The cores tile the image without overlap, so a point belongs to exactly
    one: the tile that sees it farthest from an inner edge.

    Args:
        rects: (T, 4) tile areas (:func:`tile_rects`), from a grid (``tile_grid``).
    """
    core = rects.clone()
    for lo, hi in ((0, 2), (1, 3)):  # x, then y
        starts, ends = rects[:, lo].unique(), rects[:, hi].unique()
        # Overlap k lies between start k+1 and end k of the sorted grid lines.
        cuts = torch.cat([starts[:1], (starts[1:] + ends[:-1]) / 2, ends[-1:]])
        idx = torch.searchsorted(starts, rects[:, lo].contiguous())
        core[:, lo], core[:, hi] = cuts[idx], cuts[idx + 1]
    return core


def owned(boxes: torch.Tensor, cores: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the box's centre lies in the core (N, 4) of the tile it came from."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    return ((centre >= cores[:, :2]) & (centre < cores[:, 2:])).all(dim=1)


def cut_by_inner_edge(
    boxes: torch.Tensor, rects: torch.Tensor, width: int, height: int, tolerance: float
) -> torch.Tensor:
    """(N,) bool: the box touches (within ``tolerance`` px) an edge of its tile that lies inside
    the image.

    Args:
        boxes: (N, 4) xyxy, original pixels.
        rects: (N, 4) xyxy area of each box's tile (:func:`tile_rects`).
        width, height: the image's size.
        tolerance: original pixels.
    """
    left = (rects[:, 0] > 0) & (boxes[:, 0] <= rects[:, 0] + tolerance)
    top = (rects[:, 1] > 0) & (boxes[:, 1] <= rects[:, 1] + tolerance)
    right = (rects[:, 2] < width) & (boxes[:, 2] >= rects[:, 2] - tolerance)
    bottom = (rects[:, 3] < height) & (boxes[:, 3] >= rects[:, 3] - tolerance)
    return left | top | right | bottom


def shared_view_iou(
    a: torch.Tensor, b: torch.Tensor, rect_a: torch.Tensor, rect_b: torch.Tensor
) -> torch.Tensor:
    """(P,) IoU of boxes ``a`` and ``b`` (P, 4) after clipping both to the intersection of their
    tiles' areas ``rect_a``, ``rect_b`` (P, 4); 0 where either has no area there."""
    lt, rb = torch.max(rect_a[:, :2], rect_b[:, :2]), torch.min(rect_a[:, 2:], rect_b[:, 2:])
    a = torch.cat([a[:, :2].clamp(lt, rb), a[:, 2:].clamp(lt, rb)], dim=1)
    b = torch.cat([b[:, :2].clamp(lt, rb), b[:, 2:].clamp(lt, rb)], dim=1)
    inter = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    union = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    return torch.where(inter > 0, inter / union.clamp(min=1e-9), torch.zeros_like(inter))


def join_parts(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    tile_ids: torch.Tensor,
    rects: torch.Tensor,
    cut: torch.Tensor,
    tolerance: float,
    match: float = MATCH_IOU,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joins the parts of objects that no tile saw whole (see the module's rule), greedily:
    the highest-scoring part takes in the others.

    Args:
        boxes: (N, 4) xyxy, sorted by score, highest first.
        labels: (N,) class ids.
        tile_ids: (N,) which tile each box came from (rows of ``rects``).
        rects: (T, 4) each tile's area (:func:`tile_rects`).
        cut: (N,) bool, from :func:`cut_by_inner_edge`.
        tolerance: original pixels; a part must reach further than this beyond the other's
            tile.
        match: the IoU in the shared area that makes two parts one object.

    Returns:
        ``keep`` (K,) indices into the input, still in score order, and their (K, 4) boxes
        (a part that took in others: their union).
    """
    n = len(boxes)
    c = torch.nonzero(cut).flatten()  # only cut boxes can be parts: pairs among them alone
    if len(c) < 2:
        return torch.arange(n), boxes
    lab, tid = labels[c], tile_ids[c]
    i, j = torch.nonzero(
        ((lab[:, None] == lab[None, :]) & (tid[:, None] != tid[None, :])).triu_(diagonal=1),
        as_tuple=True,
    )  # i takes in j only when i scores higher (comes first)
    i, j = c[i], c[j]
    ri, rj = rects[tile_ids[i]], rects[tile_ids[j]]
    parts = (
        (shared_view_iou(boxes[i], boxes[j], ri, rj) >= match)
        & _reaches_out(boxes[i], rj, tolerance)
        & _reaches_out(boxes[j], ri, tolerance)
    )
    out, alive = boxes.clone(), torch.ones(n, dtype=torch.bool)
    for a, b in zip(i[parts].tolist(), j[parts].tolist(), strict=True):  # a ascending
        if alive[a] and alive[b]:
            alive[b] = False
            out[a] = torch.cat([out[a, :2].minimum(out[b, :2]), out[a, 2:].maximum(out[b, 2:])])
    keep = torch.nonzero(alive).flatten()
    return keep, out[keep]


def _reaches_out(boxes: torch.Tensor, rects: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(P,) bool: box p extends more than ``tolerance`` px beyond tile area p."""
    return (
        (boxes[:, :2] < rects[:, :2] - tolerance) | (boxes[:, 2:] > rects[:, 2:] + tolerance)
    ).any(1)
