"""The synthetic domain's ground truth: one motion, two appearances, exact depth and exact flow."""

from __future__ import annotations

import pytest
import torch

from magicprop.benchmarks.flow_baseline import horn_schunck, warp
from magicprop.synthetic import SceneConfig, make_clip


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


def _moving(frames: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels that change by more than 0.02 from each frame to the next."""
    return ((frames[1:] - frames[:-1]).abs().amax(-1) > 0.02).flatten(1).float().mean(1)


@pytest.mark.parametrize("bounce", [False, True])
def test_one_motion_two_looks_exact_depth_and_flow(bounce):
    cfg = SceneConfig(size=64, frames=40, bounce=bounce, speed=0.05, camera_speed=0.05)  # motion beyond edge effects
    pair = make_clip(11, cfg)
    again = make_clip(11, cfg)
    assert torch.equal(pair.edit.frames, again.edit.frames)  # same seed, same clip
    assert torch.equal(pair.source.depth, pair.edit.depth) and torch.equal(pair.source.flow, pair.edit.flow)
    assert _err(pair.source.frames, pair.edit.frames) > 0.05  # a different appearance
    d = pair.source.depth
    assert torch.isfinite(d).all() and float(d.min()) == 0.0 and float(d.max()) == 1.0
    for clip in (pair.source, pair.edit):
        f = clip.frames.movedim(-1, 1)
        # frame t sampled where the pixels of frame t+1 were: far closer to frame t+1 than frame t itself (what is
        # left: disocclusions and antialiased edges); a flipped flow would do worse than copying
        carried = warp(f[:-1], clip.flow_back.movedim(-1, 1))
        assert _err(carried, f[1:]) < 0.5 * _err(f[:-1], f[1:])
        back = warp(f[1:], clip.flow.movedim(-1, 1))  # and the forward flow the other way round
        assert _err(back, f[:-1]) < 0.5 * _err(f[:-1], f[1:])


def test_horn_schunck_recovers_most_of_the_motion():
    clip = make_clip(12, SceneConfig(size=64, frames=6), edit=False)
    flow = horn_schunck(clip.frames[:-1], clip.frames[1:])
    carried = warp(clip.frames[:-1].movedim(-1, 1), flow)
    exact = warp(clip.frames[:-1].movedim(-1, 1), clip.flow_back.movedim(-1, 1))
    target = clip.frames[1:].movedim(-1, 1)
    copy = _err(clip.frames[:-1], clip.frames[1:])
    assert _err(carried, target) < 0.7 * copy and _err(exact, target) < 0.7 * copy


def test_bouncing_scenes_keep_moving_to_the_end():
    long = SceneConfig(size=64, frames=121)
    for seed in range(3):
        still = _moving(make_clip(seed, long, edit=False).frames)[-30:].mean()
        bouncing = _moving(make_clip(seed, SceneConfig(size=64, frames=121, bounce=True), edit=False).frames)
        assert float(bouncing[-30:].mean()) > 0.02 and float(bouncing[-30:].mean()) > float(still)
