"""Per-frame seeds and noise, shared by every path (PropDPM, FlowRefine, the trainer): a frame's randomness depends
only on (run seed, frame index), so a frame's result does not depend on the order frames are made in, on chunking,
or on which chains run."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1


def frame_seed(seed: int, index: int) -> int:
    """A 63-bit seed for frame `index` of a run seeded with `seed` (SplitMix64 finaliser of the pair)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + (int(index) + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def frame_noise(shape: Sequence[int], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Initial noise of one frame: standard normal from a CPU generator seeded with `seed`.

    The same draw as ComfyUI's ``comfy.sample.prepare_noise`` for a one-frame latent, so both backends start from
    identical noise for the same frame seed.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device="cpu")
