"""The learned fill (magicprop.motion.translate): the edit learned from the keyframe's pair, applied to new content."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from magicprop.benchmarks import hard
from magicprop.benchmarks.metrics import psnr
from magicprop.benchmarks.seeds import DEMO_SEED
from magicprop.errors import MagicPropError
from magicprop.io.video import read_frames
from magicprop.motion.colour import fit_edit_mapping
from magicprop.motion.propagate import LEARNED_GAIN, flow_propagate
from magicprop.motion.translate import fit_edit_translation, held_out_error
from magicprop.synthetic import SceneConfig, make_clip


def _styled(img: torch.Tensor) -> torch.Tensor:
    out = cv2.stylization((img.numpy() * 255).round().astype(np.uint8), sigma_s=30, sigma_r=0.3)
    return torch.from_numpy(out).float() / 255


@pytest.fixture(scope="module")
def frames(bigbuckbunny):
    """Two real frames 90 apart (180x320): the second shows content the first does not."""
    clip = read_frames(bigbuckbunny, max_frames=91)
    return [F.interpolate(clip[i].permute(2, 0, 1)[None], size=(180, 320), mode="area")[0].permute(1, 2, 0)
            for i in (0, 90)]


def test_the_learned_translation_renders_new_content_in_the_edits_look(frames):
    """Trained on frame 0 and its stylization, it renders frame 90 closer to frame 90's own stylization than the
    colour mapping does, by a clear margin (measured 21.6 against 17.0 dB); it is deterministic for a seed."""
    a, b = frames
    mapping = fit_edit_mapping(a, _styled(a)).global_only()
    learned = fit_edit_translation(a, _styled(a), mapping, seed=1)
    want = _styled(b)[None]
    gain = float(psnr(learned.apply(b)[None], want) - psnr(mapping.apply(b)[None], want))
    assert gain > 2.5, gain
    assert learned.gain < 0.7  # the network explains the pair better than the colour mapping
    again = fit_edit_translation(a, _styled(a), mapping, seed=1)
    assert torch.equal(learned.apply(b), again.apply(b))
    assert not torch.equal(learned.apply(b), fit_edit_translation(a, _styled(a), mapping, seed=2).apply(b))


def test_the_structure_model_draws_a_sketch_where_the_brightness_misleads(frames):
    """A pencil sketch draws strokes where the content has structure, whatever its brightness: the structure model
    (the look's luma from features a brightness change leaves as they are) gets a weight on held-out blocks, and
    frame 90 rendered with it is closer to frame 90's own sketch than without it (measured 16.8 against 16.3 dB; the
    colour mapping 13.7)."""
    a, b = frames
    mapping = fit_edit_mapping(a, hard.pencil(a)).global_only()
    learned = fit_edit_translation(a, hard.pencil(a), mapping)
    assert learned.weights[2] > 0, learned.weights
    without = dataclasses.replace(learned, weights=(*learned.weights[:2], 0.0))
    want = hard.pencil(b)[None]
    gain = float(psnr(learned.apply(b)[None], want) - psnr(without.apply(b)[None], want))
    assert gain > 0.3, gain


def test_the_structure_models_inputs_do_not_see_the_brightness():
    """`LUMA_FREE` names exactly the bank's channels that adding a constant to the frame's luma leaves unchanged."""
    from magicprop.motion.translate import LUMA_FREE, features

    torch.manual_seed(0)
    source = torch.rand(1, 3, 48, 64) * 0.6 + 0.1
    brighter = source + 0.2  # (every channel up by 0.2: the luma too, the chroma unchanged)
    f, g = features(source, source), features(brighter, brighter)
    same = ((f - g).abs().flatten(2).amax(-1) < 1e-4)[0]
    assert same.nonzero()[:, 0].tolist() == list(range(f.shape[1]))[LUMA_FREE]


def test_the_mask_says_what_is_learned(frames):
    """Outside the mask the 'edited' frame is noise; learning only inside it still renders the edit's look."""
    a, b = frames
    mask = torch.zeros(180, 320)
    mask[:, :200] = 1
    noise = torch.rand(180, 320, 3, generator=torch.Generator().manual_seed(0))
    noisy = torch.where(mask[..., None] > 0, _styled(a), noise)
    mapping = fit_edit_mapping(a, noisy, mask).global_only()
    masked = fit_edit_translation(a, noisy, mapping, mask)
    unmasked = fit_edit_translation(a, noisy, fit_edit_mapping(a, noisy).global_only())
    want = _styled(b)[None]
    assert float(psnr(masked.apply(b)[None], want)) > float(psnr(unmasked.apply(b)[None], want)) + 3


def test_a_colour_edit_keeps_the_colour_fill_exactly(pan):
    """A colour edit is what the colour mapping explains: the network adds nothing on content it did not learn from
    (its held-out error ratio is at least LEARNED_GAIN), so the learned fill gives the colour fill's frames bit for
    bit."""
    source, _, engine, motion = pan
    edit = source[0].flip(-1) * 0.8 + 0.1  # channels swapped, contrast lowered: a function of colour alone
    mapping = fit_edit_mapping(source[0], edit).global_only()
    assert held_out_error(source[0], edit, mapping) >= LEARNED_GAIN
    learned = flow_propagate(source, edit[None], [0], engine, motion=motion, fill="learned")
    colour = flow_propagate(source, edit[None], [0], engine, motion=motion, fill="colour")
    assert torch.equal(learned.frames, colour.frames) and torch.equal(learned.filled, colour.filled)


@pytest.fixture(scope="module")
def pan():
    """bench hard's first clip, 12 frames after the reference: a fast pan over a real still with a travelling
    deformation; (frames, shown-by-frame-0, engine, motion)."""
    from magicprop.benchmarks.real.score import MemoFlowEngine
    from magicprop.motion.engine import FlowSettings

    source, shown = hard.render(hard.CLIPS[0], 12)
    engine = MemoFlowEngine(FlowSettings())
    return source, shown, engine, engine.consecutive(source)


def test_the_learned_fill_gives_revealed_content_the_edits_texture(pan):
    """Stylized: where frame 0 never showed the content, the learned fill is at least 2 dB closer to the truth than
    the colour fill (measured +4 dB on frames 6-12); the learned fill fills what the colour fill does, and at most a
    few more pixels (those whose carried source disagrees with the frame's: AGREE)."""
    source, shown, engine, motion = pan
    truth, _ = hard.render(hard.CLIPS[0], 12, hard.stylization)
    learned = flow_propagate(source, truth[:1], [0], engine, motion=motion, fill="learned")
    colour = flow_propagate(source, truth[:1], [0], engine, motion=motion, fill="colour")
    assert bool((learned.filled >= colour.filled).all())
    assert float((learned.filled - colour.filled).mean()) < 0.02
    never = ~shown[6:]
    gain = float((psnr(learned.frames[6:], truth[6:], never) - psnr(colour.frames[6:], truth[6:], never)).mean())
    assert gain > 2, gain


def test_what_the_learned_fill_made_is_followed_along_the_flow(pan, monkeypatch):
    """A pixel the learned fill makes on frame t+1 whose content it also made on frame t (the consecutive flow valid
    there) is FOLLOW of frame t's result carried by that flow and the rest the look rendered anew (the run with
    FOLLOW 0); carried pixels are untouched, and the result is steadier (lower warp error)."""
    from magicprop.benchmarks.metrics import warp_error
    from magicprop.motion import propagate
    from magicprop.motion.engine import resize_flow, warp

    source, _, engine, motion = pan
    truth, _ = hard.render(hard.CLIPS[0], 12, hard.stylization)
    followed = flow_propagate(source, truth[:1], [0], engine, motion=motion, fill="learned")
    follow = propagate.FOLLOW
    monkeypatch.setattr(propagate, "FOLLOW", 0.0)
    anew = flow_propagate(source, truth[:1], [0], engine, motion=motion, fill="learned")
    assert torch.equal(followed.filled, anew.filled)
    carried = followed.filled == 0
    assert torch.equal(followed.frames[carried], anew.frames[carried])
    checked = 0
    for t in range(1, source.shape[0] - 1):
        _, back, _, valid = motion.pair(t)  # pair t: flow_{t+1->t} is its backward flow, valid on frame t+1
        size = tuple(source.shape[1:3])
        back = resize_flow(back[None].float(), size)
        valid = F.interpolate(valid.float()[None, None], size=size, mode="bilinear", align_corners=False)[0, 0] == 1
        prev = warp(followed.frames[t].permute(2, 0, 1)[None], back)[0].permute(1, 2, 0)
        was_made = warp((followed.filled[t] > 0.5).float()[None, None], back)[0, 0] > 0.5
        keep = valid & was_made & (followed.filled[t + 1] == 1)
        checked += int(keep.sum())
        want = follow * prev + (1 - follow) * anew.frames[t + 1]
        assert torch.allclose(followed.frames[t + 1][keep], want[keep], atol=1e-5), t
    assert checked > 1000 and 0 < follow < 1
    assert float(warp_error(followed.frames, motion).mean()) < 0.9 * float(warp_error(anew.frames, motion).mean())


def test_carried_content_the_frame_does_not_show_is_made_by_the_look(frames):
    """The flow says nothing moved, but frame 2 shows other content in a block (as a soft-edged layer's blend passes
    the forward-backward check as the background behind it): the colour fill carries the reference's look of what
    frame 0 showed there; the learned fill's veto (AGREE) finds that the carried source disagrees with the frame's
    own and makes exactly those pixels in the look of what frame 2 shows (measured 20.5 against 12.8 dB there)."""
    from magicprop.benchmarks.real.score import MemoFlowEngine
    from magicprop.motion.engine import FlowSettings, Motion
    from magicprop.motion.propagate import AGREE

    a, b = frames
    changed = a.clone()
    changed[40:120, 100:220] = b[40:120, 100:220]
    clip = torch.stack([a, a, changed])
    zero = torch.zeros(2, 2, 180, 320, dtype=torch.float16)
    valid = torch.ones(2, 180, 320, dtype=torch.bool)
    motion = Motion(zero, zero.clone(), valid, valid.clone(), (180, 320), {"estimator": "test"})
    engine = MemoFlowEngine(FlowSettings())
    run = {fill: flow_propagate(clip, _styled(a)[None], [0], engine, motion=motion, strategy="chain", fill=fill)
           for fill in ("colour", "learned")}
    assert float(run["colour"].filled.max()) == 0  # all carried
    difference = (changed - a).abs().amax(-1)
    differs = difference > AGREE
    assert 0.05 < float(differs.float().mean()) < 0.2
    made = run["learned"].filled[2] > 0.5  # (the carried source is warped: float rounding at the threshold)
    assert bool(made[difference > AGREE + 1e-3].all()) and not bool(made[difference < AGREE - 1e-3].any())
    assert float(run["learned"].filled[1].max()) == 0
    want = _styled(changed)[None]
    gain = psnr(run["learned"].frames[2:], want, differs[None]) - psnr(run["colour"].frames[2:], want, differs[None])
    assert float(gain) > 5, float(gain)


def test_an_edit_that_does_not_follow_from_the_content_keeps_the_colour_fill(pan):
    """Painted discs are tied to positions, the synthetic clips' edit re-textures each surface at random: on content
    the network did not learn from it explains nothing (held-out error at least LEARNED_GAIN, measured 1.0 for both),
    so their frames are the colour fill's bit for bit; a stylization's look follows from the content (measured
    0.61)."""
    source, _, engine, motion = pan
    images = hard.stills(hard.CLIPS[0])
    discs, _ = hard.render(hard.CLIPS[0], 12, hard.discs, images)
    styled, _ = hard.render(hard.CLIPS[0], 12, hard.stylization, images)
    pair = make_clip(DEMO_SEED, SceneConfig())
    decal = held_out_error(source[0], discs[0], fit_edit_mapping(source[0], discs[0]).global_only())
    texture = held_out_error(source[0], styled[0], fit_edit_mapping(source[0], styled[0]).global_only())
    retexture = held_out_error(pair.source.frames[0], pair.edit.frames[0],
                               fit_edit_mapping(pair.source.frames[0], pair.edit.frames[0]).global_only())
    assert decal >= LEARNED_GAIN and retexture >= LEARNED_GAIN, (decal, retexture)
    assert texture < LEARNED_GAIN - 0.15, texture
    styled_weight = fit_edit_translation(source[0], styled[0], fit_edit_mapping(source[0], styled[0]).global_only())
    decal_weight = fit_edit_translation(source[0], discs[0], fit_edit_mapping(source[0], discs[0]).global_only())
    assert styled_weight.weights[0] > 0.6 and max(decal_weight.weights) < 0.5, (styled_weight.weights,
                                                                              decal_weight.weights)
    learned = flow_propagate(source, discs[:1], [0], engine, motion=motion, fill="learned")
    colour = flow_propagate(source, discs[:1], [0], engine, motion=motion, fill="colour")
    assert torch.equal(learned.frames, colour.frames)


def test_a_mid_clip_keyframe_learns_once_for_both_its_chains(pan, monkeypatch):
    """A keyframe in the middle of the clip starts two chains (backward and forward); what it learned (the check and
    the training) is shared by both, not redone."""
    from magicprop.motion import propagate

    source, _, engine, motion = pan
    truth, _ = hard.render(hard.CLIPS[0], 12, hard.stylization)
    calls = {"check": 0, "training": 0}

    def counted(fn, name):
        def run(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return run

    monkeypatch.setattr(propagate, "held_out_error", counted(propagate.held_out_error, "check"))
    monkeypatch.setattr(propagate, "fit_edit_translation", counted(propagate.fit_edit_translation, "training"))
    result = flow_propagate(source, truth[6:7], [6], engine, motion=motion, fill="learned")
    assert calls == {"check": 1, "training": 1}, calls
    assert float(result.filled[0].mean()) > 0 and float(result.filled[12].mean()) > 0  # both chains filled pixels


def test_a_reference_too_small_to_learn_from_is_refused():
    tiny = torch.rand(6, 40, 3)
    with pytest.raises(MagicPropError, match="learned fill: the reference is 40x6; expected at least 8x8"):
        fit_edit_translation(tiny, tiny, fit_edit_mapping(torch.rand(32, 32, 3), torch.rand(32, 32, 3)))


def test_the_pair_at_a_smaller_scale_adds_its_pixels_at_their_place_in_the_frame():
    from magicprop.motion.translate import _board, _pixels, features

    torch.manual_seed(0)
    source, edited = torch.rand(40, 60, 3), torch.rand(40, 60, 3)
    mapping = fit_edit_mapping(source, edited).global_only()
    mask = torch.zeros(40, 60)
    mask[:, :30] = 1  # the edit applies to the left half
    cpu = torch.device("cpu")
    x1, y1, at1, _, _ = _pixels(source, edited, mapping, mask, cpu)
    x2, y2, at2, mean, std = _pixels(source, edited, mapping, mask, cpu, (1.0, 0.8))
    assert x1.shape[0] == 40 * 30 and x2.shape[0] == 40 * 30 + 32 * 24  # the 32x48 copy's masked pixels too
    assert torch.equal(at2[:1200], at1) and int((at2 % 60).max()) < 30  # all in the left half of the frame
    assert _board(at2[1200:], 40, 60, 2).float().mean().item() == pytest.approx(0.5, abs=0.05)
    # the smaller copy's features are measured with the frame's filter widths: its first pixel's, un-normalised
    small = F.interpolate(source.permute(2, 0, 1)[None], scale_factor=0.8, mode="bilinear", antialias=True,
                          align_corners=False).clamp(0, 1)
    f = features(small, mapping.apply(small[0].permute(1, 2, 0)).permute(2, 0, 1)[None], 60)
    assert torch.allclose(x2[1200] * std + mean, f[0, :, 0, 0], atol=1e-5)


def test_the_training_step_is_torchs_adam_bit_for_bit():
    import math

    from torch import nn

    from magicprop.motion.translate import Adam

    torch.manual_seed(0)
    x, y = torch.randn(256, 12), torch.randn(256, 3)
    nets = [nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = nets[0][0].weight.detach().clone()
    ours = Adam(list(nets[0].parameters()))
    theirs = torch.optim.Adam(nets[1].parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(theirs, lambda s: 0.5 * (1 + math.cos(math.pi * s / 20)))
    for step in range(20):
        for net in nets:
            net.zero_grad(set_to_none=True)
            (net(x) - y).abs().mean().backward()
        ours.step(3e-3 * (0.5 * (1 + math.cos(math.pi * step / 20))))
        theirs.step()
        sched.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)
    assert (nets[0][0].weight - start).abs().max() > 1e-3  # it trained


def test_the_feature_blur_on_the_cpu_is_the_torch_blur():
    """OpenCV's blur (the CPU's) and the grouped convolutions (other devices) give one feature bank: the same values
    for 1 and 3 channels, small and large widths, and a kernel cut at a small frame's sides."""
    from magicprop.motion.translate import _gauss, _gauss_torch

    torch.manual_seed(0)
    for shape in ((1, 3, 50, 70), (1, 1, 50, 70), (1, 3, 9, 12)):
        x = torch.rand(shape)
        for sigma in (0.7, 2.0, 8.0, 24.0):
            assert torch.allclose(_gauss(x, sigma), _gauss_torch(x, sigma), atol=2e-6), (shape, sigma)


def test_the_look_is_rendered_where_asked_and_the_mapping_kept_elsewhere(frames):
    source, frame = frames
    edited = _styled(source)
    mapping = fit_edit_mapping(source, edited).global_only()
    translation = fit_edit_translation(source, edited, mapping, steps=40)
    assert translation.weights[0] > 0
    mapped = mapping.apply(frame).permute(2, 0, 1)[None]
    where = torch.zeros(180, 320, dtype=torch.bool)
    where[20:150, 200:] = True
    whole, part = translation.look(frame, mapped), translation.look(frame, mapped, where)
    # the features of a crop that holds the pixels' reach are the whole frame's to float rounding (which the local
    # contrast's square root of a variance near 0 enlarges): well under an 8-bit step
    assert torch.allclose(part[..., where], whole[..., where], atol=1e-3)
    assert torch.equal(part[..., ~where], mapped[..., ~where])
    assert not torch.equal(whole[..., ~where], mapped[..., ~where])  # (the network does change those pixels)


def test_the_seam_band_holds_every_pixel_near_a_filled_one_and_none_far():
    from magicprop.motion.propagate import SEAM_BAND, SEAM_BLOCK, seam_band

    for h, w in ((180, 320), (720, 1280)):
        hole = torch.zeros(1, 1, h, w, dtype=torch.bool)
        hole[..., 50:53, 100:104] = True
        band = seam_band(hole)[0, 0]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        dist = torch.maximum((ys - ys.clamp(50, 52)).abs(), (xs - xs.clamp(100, 103)).abs())  # to the hole
        reach = SEAM_BAND * max(1.0, w / 640)
        assert bool(band[dist <= reach].all())
        assert not bool(band[dist > reach + 2 * SEAM_BLOCK].any())


def test_a_crop_that_holds_the_reach_gives_the_whole_frames_features():
    from magicprop.motion.translate import features, reach

    torch.manual_seed(0)
    source, mapped = torch.rand(1, 3, 200, 330), torch.rand(1, 3, 200, 330)
    r = reach(330)
    whole = features(source, mapped)
    crop = features(source[..., :, 120:], mapped[..., :, 120:], 330)
    inner = (whole[..., :, 120 + r:] - crop[..., :, r:]).abs().amax((0, 2, 3))
    assert float(inner.max()) < 1e-3 and float(inner.median()) < 1e-5
    # within the reach of the crop's edge the filters see its reflected border instead of the frame
    assert float((whole[..., :, 120:120 + r // 2] - crop[..., :, : r // 2]).abs().max()) > 1e-2


def test_wide_blurs_run_shrunk_only_on_frames_past_twice_the_banks_size():
    from magicprop.motion.translate import CONTRASTS, RATIOS, SCALES, _gauss, _shrink, features, reach

    widths = (*SCALES, *RATIOS, *CONTRASTS, 0.7, 1.5, 3)
    assert all(_shrink(w * max(1.0, side / 640), side) == 1 for w in widths for side in (180, 640, 1279))
    assert _shrink(64, 1280) == 2 and _shrink(8, 1280) == 1 and _shrink(96, 1920) == 2 and _shrink(192, 2560) == 4
    torch.manual_seed(0)
    x = F.avg_pool2d(torch.rand(1, 3, 720, 1280), 5, 1, 2)  # (some spatial structure)
    assert float((_gauss(x, 64, 2) - _gauss(x, 64)).abs().max()) < 2e-3
    # a crop on the shrunk frames' grid that holds the reach still gives the whole frame's features
    source, mapped = torch.rand(1, 3, 200, 1300), torch.rand(1, 3, 200, 1300)
    r = reach(1300)
    whole, crop = features(source, mapped), features(source[..., :, 400:], mapped[..., :, 400:], 1300)
    inner = (whole[..., :, 400 + r:] - crop[..., :, r:]).abs().amax((0, 2, 3))
    assert float(inner.max()) < 1e-3 and float(inner.median()) < 1e-5
