"""The host-free core of FlowRefine: the one feathered composite, the per-pixel denoise levels, the loopback init
(exactly the previous refined frame carried by the flow where it is valid), keyframes and seeds, the warp error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from magicprop.benchmarks.metrics import warp_error
from magicprop.composite import composite, feather
from magicprop.errors import MagicPropError
from magicprop.keyframes import keyframe_plan
from magicprop.motion.engine import FlowEngine, FlowSettings, resize_flow, warp
from magicprop.refine.core import (
    RefineSettings,
    active,
    denoise_levels,
    flow_refine,
    latent_region,
    refine_plan,
    start_level,
)
from magicprop.seeding import frame_seed

K, H, W = 5, 48, 64


def moving_clip(shift: int = 2, seed: int = 0) -> torch.Tensor:
    """(K, H, W, 3): a smooth random texture panning `shift` px to the right per frame."""
    g = torch.Generator().manual_seed(seed)
    big = F.interpolate(torch.rand(1, 3, H // 4, (W + K * shift) // 4 + 1, generator=g), scale_factor=4,
                        mode="bicubic", align_corners=False).clamp(0, 1)[0]
    return torch.stack([big[:, :H, (K - 1 - k) * shift:(K - 1 - k) * shift + W] for k in range(K)]).permute(0, 2, 3, 1)


class Recorder:
    """A FrameRefiner: remembers every request and returns a deterministic change of its init."""

    def __init__(self) -> None:
        self.requests = []

    def refine(self, requests):
        self.requests += requests
        return [(0.8 * r.image + 0.1 + 0.01 * r.index).clamp(0, 1) for r in requests]


def test_composite_keeps_everything_beyond_the_border_bit_identical():
    g = torch.Generator().manual_seed(0)
    base, new = torch.rand(2, 40, 50, 3, generator=g), torch.rand(2, 40, 50, 3, generator=g)
    region = torch.zeros(2, 40, 50)
    region[:, 10:20, 15:25] = 1
    out = composite(base, new, region, border=6)
    ys, xs = torch.meshgrid(torch.arange(40), torch.arange(50), indexing="ij")
    dy = (10 - ys).clamp(min=0) + (ys - 19).clamp(min=0)
    dx = (15 - xs).clamp(min=0) + (xs - 24).clamp(min=0)
    dist = (dy.float() ** 2 + dx.float() ** 2).sqrt()
    assert torch.equal(out[:, dist >= 6], base[:, dist >= 6])
    assert torch.equal(out[:, 10:20, 15:25], new[:, 10:20, 15:25])
    w = feather(region[0], 6)
    assert w[15, 25] == pytest.approx(1 - 1 / 6) and w[15, 30] == 0  # falls linearly outside
    hard = composite(base, new, region, border=0)
    assert torch.equal(hard[:, dist > 0], base[:, dist > 0])


def test_denoise_levels_follow_the_timestep_range():
    region = latent_region(torch.tensor([[True] + [False] * 15] + [[False] * 16] * 15), (2, 2))
    assert region[0, 0].tolist() == [[True, False], [False, False]]  # a cell with any filled pixel is in
    level = start_level(t_start=300.0, t_from=600.0, t_to=0.0)
    assert level == pytest.approx(0.5, abs=1e-5)
    levels = denoise_levels(region, level)
    assert active(levels, 600.0, 600.0, 0.0).tolist() == [[[[1.0, 0.0], [0.0, 0.0]]]]  # only filled cells at first
    assert active(levels, 301.0, 600.0, 0.0)[0, 0, 1, 1] == 0
    assert active(levels, 300.0, 600.0, 0.0)[0, 0, 1, 1] == 1  # from where a run at denoise would start
    assert start_level(-1.0, 600.0, 0.0) == 0.0  # denoise 0: never sampled


@pytest.mark.parametrize("denoise,filled_denoise,pattern", [
    (0.5, 0.3, r"filled_denoise=0.3 is below denoise=0.5"),
    (1.5, 1.5, r"denoise=1.5: expected"),
])
def test_bad_denoise_is_refused(denoise, filled_denoise, pattern):
    with pytest.raises(MagicPropError, match=pattern):
        RefineSettings(denoise=denoise, filled_denoise=filled_denoise).check()


def test_denoise_zero_is_the_identity_without_sampling():
    clip = moving_clip()
    filled = torch.zeros(K, H, W)
    rec = Recorder()
    for mode in ("per_frame", "loopback"):
        motion = FlowEngine().consecutive(clip) if mode == "loopback" else None
        out = flow_refine(clip, filled, [2], rec, RefineSettings(mode=mode, denoise=0.0, filled_denoise=0.6),
                          motion=motion)
        assert torch.equal(out, clip)
    assert rec.requests == []


def test_per_frame_seeds_and_keyframes():
    clip = moving_clip()
    for noise, seeds in (("fixed", [7] * 4), ("per_frame", [frame_seed(7, k) for k in (0, 1, 3, 4)])):
        rec = Recorder()
        out = flow_refine(clip, None, [2], rec, RefineSettings(noise=noise, seed=7, denoise=0.4))
        assert [r.index for r in rec.requests] == [0, 1, 3, 4]
        assert [r.seed for r in rec.requests] == seeds
        assert torch.equal(out[2], clip[2]), "keyframes are never refined"
        assert all(r.region is None for r in rec.requests)


@pytest.mark.parametrize("ref", [0, 2])
def test_loopback_init_is_the_previous_refined_frame_carried_by_the_flow(ref):
    clip = moving_clip()
    engine = FlowEngine(FlowSettings(estimator="dis", preset="medium"))
    motion = engine.consecutive(clip)
    filled = torch.zeros(K, H, W)
    filled[:, :, -6:] = 1  # the revealed strip, as flow propagation would fill it
    rec = Recorder()
    settings = RefineSettings(mode="loopback", denoise=0.5, filled_denoise=0.8)
    out = flow_refine(clip, filled, [ref], rec, settings, motion=motion)
    assert torch.equal(out[ref], clip[ref])
    order = [r.index for r in rec.requests]
    assert order == refine_plan([ref], K, settings, filled)
    assert sorted(order) == [k for k in range(K) if k != ref]
    m = motion.to_float()
    checked = 0
    for r in rec.requests:
        k = r.index
        prev = k - 1 if k > ref else k + 1
        if k > ref:
            flow, valid = m.backward[prev], m.valid_backward[prev]  # flow_{k -> k-1}, valid on frame k
        else:
            flow, valid = m.forward[k], m.valid_forward[k]  # flow_{k -> k+1}
        expected = warp(out[prev].permute(2, 0, 1)[None], resize_flow(flow[None], (H, W)))[0].permute(1, 2, 0)
        # valid pixels away from invalid edges (validity is at the frames' size here: no resampling at its edges)
        away = -F.max_pool2d(-valid.float()[None, None], 5, 1, 2)[0, 0] > 0
        assert away.float().mean() > 0.5
        assert torch.equal(r.image[away], expected[away]), k
        assert torch.equal(r.image[~valid], clip[k][~valid]), "the carried frame where the flow is invalid"
        assert r.region is not None and r.region[:, -6:].all()
        checked += 1
    assert checked == K - 1


@pytest.mark.parametrize("keys,window,max_batch", [
    ([0, 3], 2, 0),  # chains meet on frames 1 and 2 in different rounds
    ([0, 4], 3, 1),  # both chains make frame 2 in round 2, one frame per sampler call
    ([0, 4], 3, 0),  # ... the midpoint by both chains in one sampler call (results kept apart by position)
])
def test_loopback_chains_of_two_keyframes_are_blended_where_they_meet(keys, window, max_batch):
    """Chain a (from keys[0]) and chain b (from keys[1]) both make the frames of the window, each going on from its
    own result. Frame k there is keyframe_plan's linear blend (1 - t) a_k + t b_k, where a chain's frames are what a
    run from its keyframe alone makes (the same refiner and flow steps)."""
    clip = moving_clip()
    motion = FlowEngine().consecutive(clip)
    settings = RefineSettings(mode="loopback", denoise=0.5, filled_denoise=0.5, window=window, max_batch=max_batch)
    rec = Recorder()
    out = flow_refine(clip, None, keys, rec, settings, motion=motion)
    _, blends = keyframe_plan(keys, K, window)
    assert len(blends) == window and all(0 < t < 1 for _, _, t in blends.values())
    assert sorted(r.index for r in rec.requests) == sorted(
        [k for k in range(K) if k not in keys] + list(blends))  # the window is made by both chains
    assert torch.equal(out[keys[0]], clip[keys[0]]) and torch.equal(out[keys[1]], clip[keys[1]])
    a = flow_refine(clip, None, keys[:1], Recorder(), settings, motion=motion)  # chain a alone, on to the end
    b = flow_refine(clip, None, keys[1:], Recorder(), settings, motion=motion)  # chain b alone, back to 0
    for k, (key_a, key_b, t) in blends.items():
        assert (key_a, key_b) == (0, 1)
        torch.testing.assert_close(out[k], (1 - t) * a[k] + t * b[k], atol=1e-6, rtol=0)
        assert (out[k] - a[k]).abs().max() > 1e-3 and (out[k] - b[k]).abs().max() > 1e-3, k
    for k in set(range(K)) - set(blends) - set(keys):  # beyond the window: one chain's frame, unblended
        assert torch.equal(out[k], b[k] if k > keys[1] else a[k]), k


def test_loopback_on_pairwise_motion_equals_the_whole_clip_motion():
    """The refine CLI's loopback estimates the flow pair by pair (PairwiseMotion: a few pairs cached, a pair two
    chains share estimated again): the result equals a run on the whole clip's consecutive flow, exactly."""
    from magicprop.motion.engine import PairwiseMotion

    clip = moving_clip()
    engine = FlowEngine()
    settings = RefineSettings(mode="loopback", denoise=0.5, filled_denoise=0.5, window=2)
    whole = flow_refine(clip, None, [0, 4], Recorder(), settings, motion=engine.consecutive(clip))
    pairwise = PairwiseMotion(engine, lambda i: clip[i], K, (H, W), cache=1)
    assert torch.equal(flow_refine(clip, None, [0, 4], Recorder(), settings, motion=pairwise), whole)


@pytest.mark.parametrize("mode,keys", [("loopback", [2]), ("loopback", [0, 4]), ("per_frame", [2])])
def test_streamed_refine_equals_the_whole_clip_run(mode, keys):
    """The refine CLI's run: carried frames and filled masks read a frame at a time (uint8 FrameSpools), the flow
    pair by pair, each frame handed on when final and no output clip held (keep=False). The frames handed on are
    exactly the whole-clip run's (a mid-clip keyframe, two keyframes), each once."""
    from magicprop.io.spool import FrameSpool
    from magicprop.motion.engine import PairwiseMotion

    clip = (moving_clip() * 255).round().to(torch.uint8)
    filled = torch.zeros(K, H, W)
    filled[:, 10:30, 20:40] = 1
    engine = FlowEngine()
    settings = RefineSettings(mode=mode, denoise=0.3, filled_denoise=0.7, window=2)
    whole = flow_refine(clip.float() / 255, filled, keys, Recorder(), settings, motion=engine.consecutive(clip))
    got = {}

    class Masks:  # what the CLI gives: a shape and a mask per frame, read when used
        shape = filled.shape

        def __getitem__(self, k):
            return filled[k]

    with FrameSpool(iter(clip)) as carried:
        out = flow_refine(carried, Masks(), keys, Recorder(), settings, keep=False,
                          motion=PairwiseMotion(engine, lambda i: carried[i], K, (H, W), cache=1),
                          callback=lambda k, image: got.setdefault(k, []).append(image))
    assert out is None and sorted(got) == list(range(K)) and all(len(v) == 1 for v in got.values())
    assert all(torch.equal(got[k][0], whole[k]) for k in range(K))


def test_loopback_needs_the_flow():
    with pytest.raises(MagicPropError, match="loopback' needs the flow"):
        flow_refine(moving_clip(), None, [0], Recorder(), RefineSettings(mode="loopback"))


def test_warp_error_is_zero_for_a_clip_that_follows_its_flow_and_grows_with_flicker():
    clip = moving_clip()
    motion = FlowEngine().consecutive(clip)
    steady = warp_error(clip, motion)
    g = torch.Generator().manual_seed(1)
    flicker = (clip + 0.1 * torch.randn(K, 1, 1, 3, generator=g)).clamp(0, 1)
    assert steady.shape == (K - 1,)
    assert float(steady.max()) < 0.02
    assert float(warp_error(flicker, motion).mean()) > float(steady.mean()) + 0.03
