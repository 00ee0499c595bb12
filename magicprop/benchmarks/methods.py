"""The one method registry: what each row of the demo's and `bench quality`'s tables runs on a clip pair.

Each method propagates the edited frame 0 of a synthetic clip pair (magicprop.synthetic.ClipPair) through the
clip. Kinds: copying the reference; copying the TRUE previous edited frame (an oracle, not a method: the
teacher-forced model's own baseline); flow-warp propagation without diffusion (the synthetic domain's exact flow, or
a Horn & Schunck estimate from the source frames: what EbSynth-style tools do); a shipped PropDPM run
autoregressively (optionally with statistics anchoring) or teacher-forced from the true previous frames.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..backend import StandaloneModels
from ..propagate import FrameCallback
from ..run import propagate_images, teacher_forced
from .flow_baseline import horn_schunck, propagate_by_flow
from .models import DRIFT, MAIN, NO_PREV, NOISE_AUG, ROLLOUT

ANCHOR_STRENGTH = 0.5


@dataclass(frozen=True)
class Method:
    name: str  # the row name in the tables and the key in the JSON
    kind: str  # copy | copy-previous | flow-exact | flow-estimated | model | teacher-forced
    checkpoint: str | None = None  # shipped PropDPM file (model kinds)
    anchor: float = 0.0  # statistics anchoring strength (model kind), 0 = off


COPY = Method("copy reference", "copy")
FLOW_EXACT = Method("flow warp (exact flow)", "flow-exact")
FLOW_ESTIMATED = Method("flow warp (Horn-Schunck)", "flow-estimated")
NO_PREVIOUS = Method("no previous frame", "model", NO_PREV)
COPY_PREVIOUS = Method("copy true previous frame", "copy-previous")
TEACHER_FORCED = Method("paper, teacher-forced", "teacher-forced", MAIN)
PAPER = Method("paper (autoregressive)", "model", MAIN)
NOISE_AUGMENTED = Method("+ noise augmentation", "model", NOISE_AUG)
OWN_ROLLOUT = Method("+ own-rollout training", "model", ROLLOUT)
ANCHORED = Method("+ statistics anchoring", "model", MAIN, ANCHOR_STRENGTH)
ALL_CONTROLS = Method("all drift controls", "model", DRIFT, ANCHOR_STRENGTH)

QUALITY_METHODS = (COPY, FLOW_EXACT, FLOW_ESTIMATED, NO_PREVIOUS, COPY_PREVIOUS, TEACHER_FORCED, PAPER,
                   NOISE_AUGMENTED, OWN_ROLLOUT, ANCHORED, ALL_CONTROLS)
"""Rows of `bench quality`, in table order."""
DEMO_PAPER = replace(PAPER, name="PropDPM")
"""The demo's main method (its mp4 and strip show it)."""
DEMO_METHODS = (COPY, NO_PREVIOUS, DEMO_PAPER, replace(NOISE_AUGMENTED, name="PropDPM + noise aug."))
"""Rows of the demo, in table order: the same methods as above, the paper's models under the demo's names."""


def run_method(method: Method, pair, models: dict[str, StandaloneModels], steps: int, seed: int,
               callback: FrameCallback | None = None) -> torch.Tensor:
    """(K, H, W, 3) frames of `method` on a clip pair from its edited frame 0; `models` maps checkpoint files to
    loaded models; `callback` sees each frame of an autoregressive run."""
    truth = pair.edit.frames
    reference = truth[:1]
    if method.kind == "copy":
        return reference.expand_as(truth)
    if method.kind == "copy-previous":  # oracle: frame k-1 of the ground truth as frame k
        return torch.cat([reference, truth[:-1]])
    if method.kind == "flow-exact":
        return propagate_by_flow(reference[0], [f.permute(2, 0, 1) for f in pair.source.flow_back])
    if method.kind == "flow-estimated":
        return propagate_by_flow(reference[0], list(horn_schunck(pair.source.frames[:-1], pair.source.frames[1:])))
    m = models[method.checkpoint]
    if method.kind == "teacher-forced":
        return teacher_forced(m, truth, pair.source.depth, steps=steps, seed=seed)
    return propagate_images(m, reference, pair.source.depth, 0, steps=steps, seed=seed,
                            anchor_strength=method.anchor, callback=callback)
