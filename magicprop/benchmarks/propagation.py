"""The propagation runs the benchmarks (and the trainer's validation) score, with the host-free backend: from the
reference only (optionally with statistics anchoring), or teacher-forced from the true previous frames.

Each assembles encode -> latent-grid depth -> appearance tokens -> denoiser -> chain -> decode by hand; they are
kept together here so that one core run layer can replace them.
"""

from __future__ import annotations

import torch

from ..backend import DiffusersDenoiser, StandaloneModels
from ..depth import depth_to_latent_grid
from ..drift import AnchoredDenoiser
from ..propagate import FrameCallback, FrameRequest, frame_seed, propagate


def propagate_frames(
    models: StandaloneModels, reference: torch.Tensor, depth: torch.Tensor, reference_index: int,
    steps: int = 20, seed: int = 0, cfg: float = 1.0, callback: FrameCallback | None = None,
) -> torch.Tensor:
    """(1, H, W, 3) edited reference + (K, H, W) clip depth in [0, 1] -> (K, H, W, 3) propagated frames."""
    ref_latent = models.encode(reference)
    depth_lat = depth_to_latent_grid(depth[:, None].float(), tuple(ref_latent.shape[-2:]))
    tokens = models.appearance_tokens(reference, ref_latent)
    denoiser = DiffusersDenoiser(models.unet, models.config, tokens, steps=steps, cfg=cfg)
    latents = propagate(denoiser, ref_latent, depth_lat, reference_index, seed, callback=callback)
    return models.decode(latents)


def teacher_forced(models: StandaloneModels, pair, steps: int, seed: int) -> torch.Tensor:
    """Each frame of the clip pair generated in one step of the chain from the TRUE previous edited frame."""
    truth = pair.edit.frames
    reference = truth[:1]
    latents = models.encode(truth)
    grid = tuple(latents.shape[-2:])
    depth = depth_to_latent_grid(pair.source.depth[:, None].float(), grid)
    denoiser = DiffusersDenoiser(models.unet, models.config, models.appearance_tokens(reference, latents[:1]), steps)
    out = [latents[:1]]
    for k in range(1, truth.shape[0]):
        out.append(denoiser(FrameRequest(k, k - 1, latents[k - 1 : k], depth[k : k + 1], depth[k - 1 : k],
                                         frame_seed(seed, k))))
    return models.decode(torch.cat(out))


def anchored(models: StandaloneModels, reference: torch.Tensor, depth: torch.Tensor, steps: int, seed: int,
             strength: float) -> torch.Tensor:
    """`propagate_frames` from frame 0 with each frame's latent statistics pulled towards the reference's."""
    ref_latent = models.encode(reference)
    depth_lat = depth_to_latent_grid(depth[:, None].float(), tuple(ref_latent.shape[-2:]))
    inner = DiffusersDenoiser(models.unet, models.config, models.appearance_tokens(reference, ref_latent), steps)
    latents = propagate(AnchoredDenoiser(inner, ref_latent, strength), ref_latent, depth_lat, 0, seed)
    return models.decode(latents)
