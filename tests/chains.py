"""One chain of the PropDPM loop run frame by frame (the reference the batched loop is checked against in tests)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from magicprop.propdpm.loop import ChainState, FrameDenoiser, denoise_frame


def iter_chain(
    denoiser: FrameDenoiser,
    indices: Sequence[int],
    start_latent: torch.Tensor,
    depth: torch.Tensor,
    seed: int,
    start_depth: torch.Tensor | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Generate indices[1:], each from the one before it; indices[0] is the frame given by `start_latent`.

    depth: (K, 1, h, w) clip depth at the latent grid, indexed by absolute frame index.
    start_depth: (1, 1, h, w) depth that goes with `start_latent` (default depth[indices[0]]).
    Yields (index, latent) as each frame is done.
    """
    state = ChainState(list(indices), start_latent, start_depth)
    while state.pending:
        request = state.request(depth, seed)
        latent = denoise_frame(denoiser, request)
        state.advance(latent, depth)
        yield request.index, latent
