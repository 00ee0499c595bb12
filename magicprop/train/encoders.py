"""Training's view of the frozen encoders (``magicprop.propdpm.diffusers_backend.FrozenEncoders``): encoded clips and
their cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..log import get_logger
from ..propdpm.depth import depth_to_latent_grid
from ..propdpm.diffusers_backend import FrozenEncoders
from .clips import ClipData

__all__ = ["ClipCache", "EncodedClip", "FrozenEncoders", "cache_identity", "encode_clip"]

log = get_logger(__name__)


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


def cache_identity(source, encoders: FrozenEncoders) -> str:
    """What a disk cache of encoded (or flow-carried) clips is a function of: the clips (the source's fingerprint)
    and the frozen encoders (VAE scale and weights, CLIP projection)."""
    from ..propdpm.clip import projection_fingerprint

    vae = projection_fingerprint(next(encoders.vae.parameters()))
    clip = projection_fingerprint(encoders.clip.visual_projection.weight) if encoders.clip is not None else "none"
    return f"data {source.fingerprint()}, vae {vae} (scale {encoders.latent_scale:g}), clip {clip}"


class ClipCache:
    """Encoded clips by index: encoded once and kept (cache=True), or encoded each time they are drawn.

    With `disk` set, the whole source is encoded up front into one safetensors file (atomically), which later runs
    load instead of encoding again. The file records the identity of what it was made from (``cache_identity``: the
    source's fingerprint and the encoders'); a file made from other clips or encoders is encoded again (logged), never
    read as this data's.
    """

    def __init__(self, source, encoders: FrozenEncoders, cache: bool = True, disk: str | Path | None = None,
                 progress: bool = False) -> None:
        self.source, self.encoders, self.cache = source, encoders, cache
        self.store: dict[int, EncodedClip] = {}
        if disk is not None:
            self._load_or_build(Path(disk), progress)

    def _load_or_build(self, path: Path, progress: bool) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file
        from tqdm.auto import tqdm

        from ..io.fileio import atomic_path

        identity = cache_identity(self.source, self.encoders)
        if path.is_file():
            with safe_open(str(path), "pt") as f:
                stored = (f.metadata() or {}).get("identity")
            if stored == identity:
                t = load_file(str(path))
                for i in range(len(self.source)):
                    self.store[i] = EncodedClip(*(t[f"{i}.{k}"].float() for k in ("latents", "tokens", "depth")))
                return
            log.warning("data.latent_cache %s was encoded from other clips or encoders (%s, not %s): encoding it "
                        "again", path, stored, identity)
        tensors = {}
        for i in tqdm(range(len(self.source)), desc="encode clips", unit="clip", disable=not progress):
            e = encode_clip(self.encoders, self.source.clip(i))
            tensors.update({f"{i}.{k}": getattr(e, k).half().contiguous() for k in ("latents", "tokens", "depth")})
            self.store[i] = EncodedClip(e.latents.half().float(), e.tokens.half().float(), e.depth.half().float())
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"identity": identity})

    def get(self, index: int) -> EncodedClip:
        hit = self.store.get(index)
        if hit is not None:
            return hit
        encoded = encode_clip(self.encoders, self.source.clip(index))  # not cached on disk: encoded as drawn
        if self.cache:
            self.store[index] = encoded
        return encoded
