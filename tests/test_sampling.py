"""EpochSampler: repeat factors, undersampling, class-aware draws, DDP sharding, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest

from defectdet.config import SamplerConfig
from defectdet.data.sampling import EpochSampler, decode_index, repeat_factors_per_image


def make_counts() -> np.ndarray:
    """100 images, 3 classes: 60 common-only, 10 common+uncommon, 2 rare, 28 background."""
    counts = np.zeros((100, 3), dtype=np.int64)
    counts[:60, 0] = 2
    counts[60:70, [0, 1]] = 1
    counts[70:72, 2] = 1
    return counts


def test_repeat_factors_match_formula() -> None:
    counts = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 0], [3, 2]])
    t = 0.5
    f = np.array([4 / 6, 2 / 6])
    r = np.maximum(1, np.sqrt(t / f))
    expected = [r[0], r[0], r[0], r[1], 1.0, max(r)]
    np.testing.assert_allclose(repeat_factors_per_image(counts, t), expected)
    # a threshold below every frequency repeats nothing
    assert np.all(repeat_factors_per_image(counts, 0.01) == 1)


def test_none_sampler_is_a_permutation() -> None:
    s = EpochSampler(make_counts(), SamplerConfig(), seed=3)
    assert sorted(s) == list(range(100))
    s_plain = EpochSampler(make_counts(), SamplerConfig(), seed=3, shuffle=False)
    assert list(s_plain) == list(range(100))


def test_repeat_factor_repeats_each_image_by_its_rarest_class() -> None:
    """t = 0.3 on make_counts(): class 0 is in 70 of 100 images (r = 1), class 1 in 10
    (r = sqrt(3)), class 2 in 2 (r = sqrt(15)). Each epoch an image appears floor(r) or ceil(r)
    times (ceil with probability r - floor(r)), its copies numbered 0, 1, ..."""
    counts = make_counts()
    s = EpochSampler(counts, SamplerConfig(sampler="repeat-factor", repeat_threshold=0.3), seed=0)
    factor = np.ones(100)
    factor[60:70], factor[70:72] = math.sqrt(3), math.sqrt(15)
    seen = np.zeros((200, 100))
    for epoch in range(200):
        s.set_epoch(epoch)
        decoded = [decode_index(i, 100) for i in s]
        seen[epoch] = np.bincount([row for row, _ in decoded], minlength=100)
        assert np.all((seen[epoch] == np.floor(factor)) | (seen[epoch] == np.ceil(factor)))
        copies = [(row, c) for row in range(100) for c in range(int(seen[epoch, row]))]
        assert sorted(decoded) == copies
    assert seen[:, 60:70].mean() == pytest.approx(math.sqrt(3), abs=0.05)
    assert seen[:, 70:72].mean() == pytest.approx(math.sqrt(15), abs=0.1)
    expected_length = 60 + 10 * math.sqrt(3) + 2 * math.sqrt(15) + 28
    assert seen.sum(1).mean() == pytest.approx(expected_length, rel=0.01)


@pytest.mark.parametrize("fraction", [0.3, 0.25, 0.5, 0.0])
def test_background_fraction(fraction: float) -> None:
    counts = make_counts()
    background = set(np.flatnonzero(counts.sum(1) == 0).tolist())  # 28 images
    s = EpochSampler(counts, SamplerConfig(background_fraction=fraction), seed=1)
    want = math.ceil(fraction * len(background))
    seen: set[int] = set()
    epochs = math.ceil(1 / fraction) if fraction else 3
    for epoch in range(epochs):
        s.set_epoch(epoch)
        rows = s.epoch_rows.tolist()
        bg = [r for r in rows if r in background]
        assert len(bg) == len(set(bg)) == want
        assert len(rows) == 72 + want
        seen |= set(bg)
    assert seen == (background if fraction else set())


def test_undersample_majority() -> None:
    counts = make_counts()  # rows 0..59 hold only class 0 (the majority)
    s = EpochSampler(counts, SamplerConfig(undersample_majority=0.2), seed=5)
    seen: set[int] = set()
    for epoch in range(5):
        s.set_epoch(epoch)
        rows = s.epoch_rows
        majority = rows[rows < 60]
        assert len(majority) == 12
        assert set(range(60, 100)) <= set(rows.tolist())  # everything else kept
        seen |= set(majority.tolist())
    assert seen == set(range(60))


def test_class_aware_is_near_uniform_per_class() -> None:
    counts = np.zeros((2000, 4), dtype=np.int64)
    counts[:1500, 0] = 1
    counts[1500:1850, 1] = 1
    counts[1850:1990, 2] = 1
    counts[1990:2000, 3] = 1
    s = EpochSampler(counts, SamplerConfig(sampler="class-aware"), seed=0)
    rows = s.epoch_rows
    assert len(rows) == 2000
    drawn = counts[rows].sum(0)
    expected = len(rows) / 4
    chi2 = float(((drawn - expected) ** 2 / expected).sum())
    assert chi2 < 16.3  # p = 0.001 for 3 degrees of freedom
    # images within the rare class are all drawn (500 draws over 10 images)
    assert set(rows[rows >= 1990].tolist()) == set(range(1990, 2000))


def test_class_aware_keeps_background_share() -> None:
    counts = make_counts()
    s = EpochSampler(counts, SamplerConfig(sampler="class-aware", background_fraction=0.5), seed=0)
    rows = s.epoch_rows
    assert len(rows) == 72 + 14
    assert (counts[rows].sum(1) == 0).sum() == 14


@pytest.mark.parametrize("sampler", ["none", "repeat-factor", "class-aware"])
def test_ddp_shards_partition_the_epoch(sampler: str) -> None:
    cfg = SamplerConfig(sampler=sampler, repeat_threshold=0.3, background_fraction=0.5)
    ranks = [EpochSampler(make_counts(), cfg, seed=7, rank=r, world_size=2) for r in (0, 1)]
    single = EpochSampler(make_counts(), cfg, seed=7)
    for epoch in (0, 1, 4):
        for s in [*ranks, single]:
            s.set_epoch(epoch)
        a, b = list(ranks[0]), list(ranks[1])
        assert len(a) == len(b) == len(ranks[0]) == math.ceil(len(single) / 2)
        full = list(single)
        merged = [x for pair in zip(a, b, strict=True) for x in pair]
        assert merged[: len(full)] == full  # interleaved shards rebuild the list (+ padding)
        assert merged[len(full) :] == full[: len(merged) - len(full)]


def test_determinism_and_state_dict() -> None:
    cfg = SamplerConfig(sampler="repeat-factor", repeat_threshold=0.3, background_fraction=0.5)
    a = EpochSampler(make_counts(), cfg, seed=11)
    b = EpochSampler(make_counts(), cfg, seed=11)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    c = EpochSampler(make_counts(), cfg, seed=99)
    c.load_state_dict(a.state_dict())
    assert c.state_dict() == {"epoch": 3, "seed": 11, "hardness": None}
    assert list(c) == list(a)


def test_stats_show_rare_share_rising() -> None:
    counts = make_counts()
    s = EpochSampler(counts, SamplerConfig(sampler="repeat-factor", repeat_threshold=0.3), seed=0)
    st = s.stats()
    assert st["instances_before"] == [2 * 60 + 10, 10, 2]
    # What the loader gets this epoch, counted from the indices it draws:
    rows = [decode_index(i, 100)[0] for i in s]
    after = counts[rows].sum(0)
    assert st["images_after"] == len(rows) and st["instances_after"] == after.tolist()
    assert st["share_after"] == pytest.approx((after / after.sum()).tolist())
    assert st["share_after"][2] > st["share_before"][2] == pytest.approx(2 / 142)
    assert st["share_after"][0] < st["share_before"][0] == pytest.approx(130 / 142)
    assert st["background_before"] == st["background_after"] == 28


def test_bad_arguments() -> None:
    from defectdet.errors import ConfigError

    with pytest.raises(ConfigError):
        EpochSampler(make_counts(), SamplerConfig(background_fraction=1.5))
    with pytest.raises(ValueError):
        EpochSampler(make_counts(), SamplerConfig(), rank=2, world_size=2)
