"""Guided patch synthesis (magicprop.motion.synthesis): what the flow cannot see, made from the edited reference."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from magicprop.errors import MagicPropError
from magicprop.io.video import read_frames
from magicprop.motion.synthesis import SynthesisSettings, synthesize


@pytest.fixture(scope="module")
def pair(bigbuckbunny):
    """A real frame (180x320) and its OpenCV stylization: an edit a colour mapping cannot explain."""
    frame = read_frames(bigbuckbunny, max_frames=1)[0]
    src = F.interpolate(frame.permute(2, 0, 1)[None], size=(180, 320), mode="area")[0].permute(1, 2, 0)
    styled = cv2.stylization((src.numpy() * 255).round().astype(np.uint8), sigma_s=30, sigma_r=0.3)
    return src, torch.from_numpy(styled).float() / 255


def test_a_translated_frame_is_made_exactly_where_the_reference_shows_its_content(pair):
    src, edited = pair
    target, truth = torch.roll(src, (6, -9), (0, 1)), torch.roll(edited, (6, -9), (0, 1))
    hole = torch.zeros(180, 320, dtype=torch.bool)
    hole[40:140, 60:260] = True  # well inside: every patch's content is in the reference, 6 and 9 px away
    init = torch.where(hole[..., None], target, truth)  # a wrong guess in the hole (the unedited frame)
    out = synthesize(target, hole, src, edited, init, seed=3)
    assert torch.equal(out[~hole], init[~hole])
    assert (out - truth)[hole].abs().max() < 1e-5


def test_synthesis_is_deterministic_for_a_seed_and_uses_it(pair):
    src, edited = pair
    target = torch.roll(src, (20, 30), (0, 1)).flip(1)  # mirrored: no exact match, the search decides
    hole = torch.zeros(180, 320, dtype=torch.bool)
    hole[30:150, 40:280] = True
    init = target.clone()
    a = synthesize(target, hole, src, edited, init, seed=7)
    assert torch.equal(a, synthesize(target, hole, src, edited, init, seed=7))
    assert not torch.equal(a, synthesize(target, hole, src, edited, init, seed=8))
    # and it renders the edit's look: closer to the stylised frame's statistics than the unedited input was
    want = torch.from_numpy(cv2.stylization((target.numpy() * 255).round().astype(np.uint8), sigma_s=30,
                                            sigma_r=0.3)).float() / 255
    assert (a - want)[hole].abs().mean() < (init - want)[hole].abs().mean()


def test_no_hole_returns_the_input_and_bad_settings_are_refused(pair):
    src, edited = pair
    none = torch.zeros(180, 320, dtype=torch.bool)
    assert synthesize(src, none, src, edited, src) is src
    with pytest.raises(MagicPropError, match="patch=4: expected an odd side"):
        synthesize(src, ~none, src, edited, src, settings=SynthesisSettings(patch=4))
    with pytest.raises(MagicPropError, match="synthesis inputs"):
        synthesize(src, ~none, src, edited[:90], src)
