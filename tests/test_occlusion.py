"""Occlusion against ground truth: the flow's forward-backward check finds what the synthetic renderer hides.

The renderer knows which surface every pixel shows, so a pixel of frame t is occluded in frame s when its exact
flow lands on another surface there (or outside the frame). The check under test is engine.consistency on composed
consecutive flows (accumulated_flow with OCCLUSION_CHECK), on pairs 8 and 12 frames apart of clips moving over 3 px
per frame with shapes crossing the background and each other.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from magicprop.benchmarks.real.edits import EDITS
from magicprop.motion.engine import FlowEngine, FlowSettings, Motion, resize_flow, warp
from magicprop.motion.propagate import OCCLUSION_CHECK, accumulated_flow, flow_propagate
from magicprop.synthetic import SceneConfig, make_clip, occlusion, scene_motion

CFG = SceneConfig(size=128, frames=33, speed=0.05, camera_speed=0.08, bounce=True)
SEEDS = (3, 4, 5)
STARTS = (4, 12, 20)
GAPS = (8, 12)


def _edge_band(occluded: torch.Tensor, px: int = 2) -> torch.Tensor:
    """Pixels within `px` of an occlusion edge (either side)."""
    o = occluded.float()[None, None]
    k = 2 * px + 1
    return ((F.max_pool2d(o, k, 1, px) > 0) & (F.max_pool2d(1 - o, k, 1, px) > 0))[0, 0]


@pytest.fixture(scope="module")
def scenes():
    engine = FlowEngine(FlowSettings())
    out = []
    for seed in SEEDS:
        clip = make_clip(seed, CFG, edit=False)
        out.append((seed, clip, scene_motion(seed, CFG), engine.consecutive(clip.frames)))
    return engine, out


def test_scenes_move_fast_and_cross():
    clip = make_clip(SEEDS[0], CFG, edit=False)
    assert float(clip.flow.norm(dim=-1).mean()) >= 3.0  # pixels per frame
    assert all(len(clip.surface[t].unique()) >= 3 for t in range(CFG.frames))  # background and two shapes or more


def test_invalid_class_matches_ground_truth_occlusion(scenes):
    _, items = scenes
    tp = fp = fn = 0
    for _, _clip, motion, estimated in items:
        for s in STARTS:
            for k, _, valid in accumulated_flow(estimated.to_float(), list(range(s, CFG.frames)), OCCLUSION_CHECK):
                if k - s not in GAPS:
                    continue
                occluded, known = occlusion(motion, CFG, k, s)
                keep = known & ~_edge_band(occluded)
                invalid = ~valid
                tp += int((invalid & occluded & keep).sum())
                fp += int((invalid & ~occluded & keep).sum())
                fn += int((valid & occluded & keep).sum())
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(f"occlusion: precision {precision:.3f} recall {recall:.3f} over {tp + fn} occluded pixels")
    assert precision >= 0.7 and recall >= 0.7


def test_filled_pixels_beat_the_stretched_warp_there(scenes):
    engine, items = scenes
    edit = EDITS["false colour"]
    filled_err = stretched_err = 0.0
    for _, clip, motion, estimated in items:
        s = STARTS[0]
        frames = clip.frames[s:]
        truth = edit(frames)
        result = flow_propagate(frames, truth[:1], [0], engine, motion=_slice(estimated, s), strategy="accumulate")
        flows = {k: f for k, f, _ in accumulated_flow(estimated.to_float(), list(range(s, CFG.frames)))}
        reference = truth[:1].permute(0, 3, 1, 2)
        for gap in GAPS:
            k = s + gap
            occluded, known = occlusion(motion, CFG, k, s)
            where = (result.filled[gap] > 0.5) & occluded & known & ~_edge_band(occluded)
            stretched = warp(reference, resize_flow(flows[k], frames.shape[1:3]))[0].permute(1, 2, 0)
            filled_err += float((result.frames[gap] - truth[gap]).abs()[where].mean())
            stretched_err += float((stretched - truth[gap]).abs()[where].mean())
    assert filled_err < 0.5 * stretched_err, (filled_err, stretched_err)


def _slice(motion, start):
    return Motion(motion.forward[start:], motion.backward[start:], motion.valid_forward[start:],
                  motion.valid_backward[start:], motion.frame_size, motion.settings)
