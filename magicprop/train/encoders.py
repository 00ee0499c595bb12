"""Training's view of the frozen encoders (``magicprop.propdpm.diffusers_backend.FrozenEncoders``): encoded clips and
their cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..propdpm.depth import depth_to_latent_grid
from ..propdpm.diffusers_backend import FrozenEncoders
from .clips import ClipData

__all__ = ["ClipCache", "EncodedClip", "FrozenEncoders", "encode_clip"]


@dataclass
class EncodedClip:
    latents: torch.Tensor  # (T, 4, h, w) unscaled VAE latents (posterior mean)
    tokens: torch.Tensor  # (T, 1+N, C) projected CLIP tokens of every frame (any frame can be the reference)
    depth: torch.Tensor  # (T, 1, h, w) depth at the latent grid


@torch.no_grad()
def encode_clip(encoders: FrozenEncoders, clip: ClipData, chunk: int = 16) -> EncodedClip:
    """Latents and CLIP tokens of every frame of a clip, and its depth on the latent grid."""
    frames = clip.frames.float() / 255.0  # (T, H, W, 3)
    latents, tokens = [], []
    for i in range(0, frames.shape[0], chunk):
        x = frames[i : i + chunk]
        latents.append(encoders.encode(x, chunk))
        tokens.append(encoders.clip_tokens(x).float().cpu())
    latents = torch.cat(latents)
    depth = depth_to_latent_grid(clip.depth[:, None].float(), tuple(latents.shape[-2:]))
    return EncodedClip(latents, torch.cat(tokens), depth)


class ClipCache:
    """Encoded clips by index: encoded once and kept (cache=True), or encoded each time they are drawn.

    With `disk` set, the whole source is encoded up front into one safetensors file (atomically), which later runs
    with the same data and encoders load instead of encoding again.
    """

    def __init__(self, source, encoders: FrozenEncoders, cache: bool = True, disk: str | Path | None = None,
                 progress: bool = False) -> None:
        self.source, self.encoders, self.cache = source, encoders, cache
        self.store: dict[int, EncodedClip] = {}
        if disk is not None:
            self._load_or_build(Path(disk), progress)

    def _load_or_build(self, path: Path, progress: bool) -> None:
        from safetensors.torch import load_file, save_file
        from tqdm.auto import tqdm

        from ..io.fileio import atomic_path

        if path.is_file():
            t = load_file(str(path))
            for i in range(len(self.source)):
                self.store[i] = EncodedClip(*(t[f"{i}.{k}"].float() for k in ("latents", "tokens", "depth")))
            return
        tensors = {}
        for i in tqdm(range(len(self.source)), desc="encode clips", unit="clip", disable=not progress):
            e = encode_clip(self.encoders, self.source.clip(i))
            tensors.update({f"{i}.{k}": getattr(e, k).half().contiguous() for k in ("latents", "tokens", "depth")})
            self.store[i] = EncodedClip(e.latents.half().float(), e.tokens.half().float(), e.depth.half().float())
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))

    def get(self, index: int) -> EncodedClip:
        hit = self.store.get(index)
        if hit is not None:
            return hit
        encoded = encode_clip(self.encoders, self.source.clip(index))  # not cached on disk: encoded as drawn
        if self.cache:
            self.store[index] = encoded
        return encoded
