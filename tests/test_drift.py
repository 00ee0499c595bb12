"""Drift controls and keyframes in the core: anchoring, several edited references blended without a seam."""

from __future__ import annotations

import pytest
import torch
from chains import iter_chain

from magicprop.errors import MagicPropError
from magicprop.keyframes import keyframe_plan, two_keyframe_plan
from magicprop.propdpm.drift import AnchoredDenoiser, anchor_statistics, channel_stats
from magicprop.propdpm.loop import Keyframe, propagate, propagate_keyframes


def test_anchoring_matches_reference_statistics():
    torch.manual_seed(0)
    ref = torch.randn(1, 4, 8, 8) * 2 + 1
    x = torch.randn(1, 4, 8, 8) * 0.5 - 3
    full = anchor_statistics(x, ref, 1.0)
    torch.testing.assert_close(channel_stats(full)[0], channel_stats(ref)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(channel_stats(full)[1], channel_stats(ref)[1], atol=1e-5, rtol=1e-5)
    assert torch.equal(anchor_statistics(x, ref, 0.0), x)
    half = anchor_statistics(x, ref, 0.5)
    torch.testing.assert_close(half, (x + full) / 2)
    with pytest.raises(MagicPropError, match="anchor strength"):
        anchor_statistics(x, ref, 1.5)


def test_anchoring_inside_a_mask_leaves_the_outside_alone():
    torch.manual_seed(1)
    ref, x = torch.randn(1, 4, 8, 8) + 2, torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    out = anchor_statistics(x, ref, 1.0, mask, mask)
    assert torch.equal(out[..., :2, :], x[..., :2, :])
    torch.testing.assert_close(channel_stats(out, mask)[0], channel_stats(ref, mask)[0], atol=1e-5, rtol=1e-5)


class Blender:
    """A deterministic stand-in denoiser: moves the previous latent one step towards its keyframe's colour."""

    def __init__(self, target: float) -> None:
        self.target = target

    def denoise(self, jobs: list) -> torch.Tensor:
        return torch.cat([req.prev_latent * 0.7 + 0.3 * d.target + 0.01 * req.depth.mean() for d, req in jobs])


def test_single_keyframe_run_equals_forward_and_backward_chains():
    depth = torch.rand(9, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    ref = torch.zeros(1, 4, 4, 4)
    out = propagate(Blender(1.0), ref, depth, 4, seed=0)
    fwd = dict(iter_chain(Blender(1.0), list(range(4, 9)), ref, depth, 0))
    bwd = dict(iter_chain(Blender(1.0), list(range(4, -1, -1)), ref, depth, 0))
    for k, v in {**fwd, **bwd}.items():
        assert torch.equal(out[k], v[0])


def test_keyframes_blend_without_a_seam():
    k, window = 21, 6
    depth = torch.rand(k, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    a, b = torch.full((1, 4, 4, 4), -1.0), torch.full((1, 4, 4, 4), 1.0)
    keys = [Keyframe(0, a, Blender(-1.0)), Keyframe(k - 1, b, Blender(1.0))]
    out = propagate_keyframes(keys, depth, seed=0, window=window)
    single_a = propagate(Blender(-1.0), a, depth, 0, 0)
    single_b = propagate(Blender(1.0), b, depth, k - 1, 0)
    _, blends = keyframe_plan([0, k - 1], k, window)
    lo, hi = min(blends), max(blends)
    assert hi - lo + 1 == window
    for f in range(k):
        if f < lo:
            assert torch.equal(out[f], single_a[f]), f
        elif f > hi:
            assert torch.equal(out[f], single_b[f]), f
    steps = (out[1:] - out[:-1]).abs().mean(dim=(1, 2, 3))
    own = torch.cat([(single_a[1:lo] - single_a[: lo - 1]), (single_b[hi + 2 :] - single_b[hi + 1 : -1])]).abs()
    assert steps[lo - 1 : hi + 1].max() <= 2 * own.mean(dim=(1, 2, 3)).max() + (2 / (window + 1)), steps
    assert torch.equal(out[0], a[0]) and torch.equal(out[-1], b[0])


def test_keyframe_plan_refuses_bad_indices():
    with pytest.raises(MagicPropError, match="distinct indices in increasing order"):
        keyframe_plan([5, 2], 10)
    with pytest.raises(MagicPropError, match="out of range"):
        keyframe_plan([0, 10], 10)
    chains, blends = keyframe_plan([2, 5, 9], 12, 2)
    covered = sorted({i for c in chains for i in c.indices} - {2, 5, 9})
    assert covered == [0, 1, 3, 4, 6, 7, 8, 10, 11] and sorted(blends) == [3, 4, 6, 7]


@pytest.mark.parametrize("keys, num, window", [([2, 5, 9], 12, 2), ([0, 60], 121, 8), ([0, 7], 8, 0), ([3, 4], 9, 8)])
def test_two_keyframe_plan_carries_every_frame_from_its_two_nearest_keyframes(keys, num, window):
    groups, sides = two_keyframe_plan(keys, num, window)
    reach: dict[int, set[int]] = {}  # frame -> the keyframe positions whose chains carry it
    for group in groups:
        runs = [(c.indices[0], c.indices[-1]) for c in group]
        assert len(group) == 1 or (len({b for _, b in runs}) == 1 and len({a < b for a, b in runs}) == 1)
        for c in group:
            assert [abs(x - y) for x, y in zip(c.indices, c.indices[1:])] == [1] * (len(c.indices) - 1)
            assert c.indices[0] == keys[c.key]
            for k in c.indices[1:]:
                reach.setdefault(k, set()).add(c.key)
    assert sorted(sides) == sorted(set(range(num)) - set(keys))
    _, blends = keyframe_plan(keys, num, window)
    for k, (first, second, t) in sides.items():
        assert reach[k] >= {first, second}
        nearer = min(range(len(keys)), key=lambda m: (abs(keys[m] - k), m))
        after = sum(i < k for i in keys)
        if k in blends:  # the nearer keyframe changes where keyframe_plan's chains meet, with its weights
            assert (first, second, t) == blends[k]
        elif 0 < after < len(keys):
            assert {first, second} == {after - 1, after} and t in (0.0, 1.0)
            assert (first, second)[int(t)] == nearer or abs(keys[first] - k) == abs(keys[second] - k)
        else:  # before the first keyframe or after the last: the two nearest, the nearer first
            assert t == 0.0 and first == nearer and abs(first - second) == 1
    # one keyframe: keyframe_plan's chains
    groups, sides = two_keyframe_plan([4], 10, window)
    assert not sides and [c.indices for g in groups for c in g] == [c.indices for c in keyframe_plan([4], 10)[0]]


def test_anchored_denoiser_wraps_any_denoiser():
    g = torch.Generator().manual_seed(4)
    ref = torch.full((1, 4, 4, 4), 0.5) + torch.randn(1, 4, 4, 4, generator=g) * 0.1
    depth = torch.rand(5, 1, 4, 4, generator=g)
    anchored = AnchoredDenoiser(Blender(3.0), ref, 1.0)
    out = propagate(anchored, ref, depth, 0, 0)
    for f in range(1, 5):
        torch.testing.assert_close(channel_stats(out[f : f + 1])[0], channel_stats(ref)[0], atol=1e-4, rtol=1e-4)
