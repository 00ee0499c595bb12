"""Training data: clip sources (the synthetic domain; prepared shards in `shards`) and deterministic triplets.

Every training sample is a function of (run seed, global sample index) alone: which clip, which reference, previous
and target frames, the timestep, the noise and the appearance-dropout decision. A step's global batch is samples
step*B .. step*B+B-1, split among processes by rank. So a run resumes exactly where it stopped (the data position is
the step), and N processes see exactly the samples one process would (MagicProp section 3.3.3: random triplets of
one video; the previous->target gap follows the configured distribution, in both directions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MagicPropError
from ..seeding import frame_seed
from .clips import ClipData, ClipSource


class SyntheticSource:
    """Clips of the synthetic domain (magicprop.synthetic), seeds seed .. seed + n - 1, source appearance."""

    def __init__(self, num_clips: int, seed: int = 0, size: int = 128, frames: int = 30) -> None:
        from ..synthetic import SceneConfig

        self.n, self.seed = num_clips, seed
        self.scene = SceneConfig(size=size, frames=frames)

    def __len__(self) -> int:
        return self.n

    def frames_in(self, index: int) -> int:
        return self.scene.frames

    def clip(self, index: int) -> ClipData:
        from ..synthetic import make_clip

        c = make_clip(self.seed + index, self.scene, edit=False)
        return ClipData((c.frames * 255).round().to(torch.uint8), c.depth)

    def describe(self) -> dict:
        return {"source": "synthetic", "clips": self.n, "seed": self.seed, "size": self.scene.size,
                "frames": self.scene.frames}

    def fingerprint(self) -> str:
        """The identity of the clips: they are a function of (count, seed, size, frames) alone."""
        return "synthetic-{clips}-{seed}-{size}-{frames}".format(**self.describe())


# -- deterministic triplets ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SampleSpec:
    clip: int
    ref: int
    prev: int
    target: int
    timestep: int
    drop_appearance: bool
    noise_seed: int
    rollout: bool = False
    """Replace the true previous frame by the model's own rollout towards it (drift control)."""
    motion_level: float = 0.0
    """Flow-guided training: the noise augmentation level of the carried latent (0 otherwise)."""


def anchor_reference(g: torch.Generator, target: int, frames: int) -> int:
    """A flow-guided sample's reference: one of the clip's anchors (first, middle, last frame, ``train.motion``) other
    than the target, drawn with probability proportional to its distance from the target (far references, as in
    long clips, are the ones flow alone gets wrong)."""
    from .motion import anchors

    far = [a for a in anchors(frames) if a != target] or [target]
    w = torch.tensor([float(abs(a - target)) or 1.0 for a in far], dtype=torch.float64)
    return far[int(torch.multinomial(w, 1, generator=g))]


def sample_spec(seed: int, index: int, source: ClipSource, gaps, gap_weights, backward: float,
                num_timesteps: int, appearance_dropout: float, rollout_probability: float = 0.0,
                flow_guided: bool = False, motion_noise: float = 0.0) -> SampleSpec:
    """The triplet, timestep, noise seed, dropout and rollout decisions of global sample `index`.

    flow_guided: the reference is an anchor far from the target (``anchor_reference``) and the carried latent's noise
    level is drawn uniformly below `motion_noise`; these draws come after the others, so every other decision is the
    one a paper-layout run makes."""
    g = torch.Generator().manual_seed(frame_seed(seed, index))
    clip = int(torch.randint(len(source), (1,), generator=g))
    frames = source.frames_in(clip)
    w = torch.tensor(gap_weights, dtype=torch.float64)
    gap = min(int(gaps[int(torch.multinomial(w, 1, generator=g))]), frames - 1)
    back = bool(torch.rand((), generator=g) < backward)
    start = int(torch.randint(frames - gap, (1,), generator=g))
    target, prev = (start, start + gap) if back else (start + gap, start)
    ref = int(torch.randint(frames, (1,), generator=g))
    timestep = int(torch.randint(num_timesteps, (1,), generator=g))
    drop = bool(torch.rand((), generator=g) < appearance_dropout)
    noise_seed = int(torch.randint(2**62, (1,), generator=g))
    rollout = bool(torch.rand((), generator=g) < rollout_probability)
    level = 0.0
    if flow_guided:
        ref = anchor_reference(g, target, frames)
        level = float(torch.rand((), generator=g)) * motion_noise
    return SampleSpec(clip, ref, prev, target, timestep, drop, noise_seed, rollout, level)


def make_source(data_cfg) -> ClipSource:
    if data_cfg.source == "synthetic":
        return SyntheticSource(data_cfg.synthetic_clips, data_cfg.synthetic_seed, data_cfg.synthetic_size,
                               data_cfg.synthetic_frames)
    if data_cfg.source == "shards":
        if not data_cfg.shards:
            raise MagicPropError("data.source = \"shards\" needs data.shards = the folder written by prepare.")
        from .shards import ShardSource

        return ShardSource(data_cfg.shards)
    raise MagicPropError(f"data.source={data_cfg.source!r}: expected \"shards\" or \"synthetic\".")
