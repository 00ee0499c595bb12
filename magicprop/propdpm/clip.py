"""CLIP vision input and tokens, shared by training and inference.

The reference is seen by CLIP as the whole frame resized to a square (no centre crop): a crop would break the
correspondence between the CLIP patch grid and the latent grid on non-square frames. The preprocessing
reproduces ComfyUI's ``clip_preprocess(..., crop=False)`` operation for operation, so that a model trained with
the host-free trainer sees the same pixels inside ComfyUI.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import MagicPropError
from ..io.fileio import model_folder
from ..log import get_logger

log = get_logger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(
    images: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """(B, H, W, 3) images in [0, 1] -> (B, 3, size, size) normalised CLIP input, no crop.

    Same operations as ComfyUI's clip_preprocess with crop=False: bicubic resize with antialias straight to
    size x size, quantisation to 1/255, then the CLIP mean/std.
    """
    if images.ndim != 4 or images.shape[-1] < 3:
        raise MagicPropError(
            f"images has shape {tuple(images.shape)}: expected (batch, height, width, 3) RGB in [0, 1] "
            "(ComfyUI's IMAGE layout)."
        )
    x = images[..., :3].movedim(-1, 1)  # (b, 3, H, W)
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True)
    x = torch.clip(255.0 * x, 0, 255).round() / 255.0
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return (x - mean_t) / std_t


def projection_fingerprint(weight: torch.Tensor) -> str:
    """A short, dtype-robust fingerprint of a CLIP model's visual projection matrix.

    Rounded to fp16 first: ComfyUI keeps CLIP vision in fp16, the trainer may hold it in fp32.
    """
    data = weight.detach().to("cpu", torch.float16).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP vision model a checkpoint was trained with (recorded in its metadata)."""

    token_dim: int = 768
    """Width of the projected tokens (projection_dim)."""
    num_tokens: int = 257
    """1 class token + a square grid of patch tokens ((image_size / patch_size)^2)."""
    image_size: int = 224
    crop: str = "none"
    """Always "none": the whole frame is resized to a square (see module docstring)."""
    fingerprint: str | None = None
    """projection_fingerprint() of the model's visual projection, or None when unknown."""
    name: str = "openai/clip-vit-large-patch14"
    """What users should load: the model's public name (for messages only; nothing is downloaded)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The vision config (hidden size, layers, heads, patch size ...)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipSpec:
        return cls(**data)

    def describe(self) -> str:
        grid = round((self.num_tokens - 1) ** 0.5)
        return (
            f"{self.name} ({self.image_size} px, {self.num_tokens} tokens = 1 + {grid}x{grid} patches, "
            f"projection width {self.token_dim})"
        )


def check_clip_compatible(spec: ClipSpec, token_dim: int, num_tokens: int, fingerprint: str | None) -> None:
    """Error if a CLIP vision model cannot make this checkpoint's tokens; warn if it is another model's weights."""
    if token_dim != spec.token_dim or num_tokens != spec.num_tokens:
        raise MagicPropError(
            f"clip_vision gives {num_tokens} tokens of width {token_dim}, but the checkpoint was trained with "
            f"{spec.describe()}: load that CLIP vision model."
        )
    if spec.fingerprint and fingerprint and fingerprint != spec.fingerprint:
        log.warning(
            "The CLIP vision model's weights differ from the ones the checkpoint was trained with (%s, fingerprint "
            "%s, got %s): appearance tokens will not match what PropDPM learned.", spec.describe(), spec.fingerprint,
            fingerprint,
        )


def clip_vision_folder(path: str | Path, what: str = "clip vision model") -> Path:
    """A local CLIP vision folder (a CLIPVisionModelWithProjection, or a whole CLIP model it loads from), or one
    MagicPropError line naming `what` (checked before loading)."""
    return model_folder(path, what, "a transformers CLIPVisionModelWithProjection, e.g. a saved "
                        "openai/clip-vit-large-patch14", kinds=("clip_vision_model", "clip"))


def load_clip_vision(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """Load a transformers CLIPVisionModelWithProjection from a local folder (never the hub)."""
    from transformers import CLIPVisionModelWithProjection

    folder = clip_vision_folder(path)
    model = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True, dtype=dtype)
    return model.to(device).eval().requires_grad_(False)


def clip_norm_stats(path: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from a model folder's preprocessor_config.json, else OpenAI CLIP's."""
    pre = Path(path) / "preprocessor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text())
        return tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)), tuple(cfg.get("image_std", OPENAI_CLIP_STD))
    return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def clip_spec_of(model, name: str = "openai/clip-vit-large-patch14") -> ClipSpec:
    """Describe a transformers CLIPVisionModelWithProjection for the checkpoint metadata."""
    cfg = model.config
    grid = cfg.image_size // cfg.patch_size
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
            "image_size", "projection_dim", "hidden_act", "layer_norm_eps")
    return ClipSpec(
        token_dim=cfg.projection_dim,
        num_tokens=1 + grid * grid,
        image_size=cfg.image_size,
        fingerprint=projection_fingerprint(model.visual_projection.weight),
        name=name,
        config={k: getattr(cfg, k) for k in keep},
    )


@torch.no_grad()
def clip_tokens(model, images: torch.Tensor, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> torch.Tensor:
    """(B, H, W, 3) in [0, 1] -> (B, 1+N, C) projected tokens of a transformers CLIPVisionModelWithProjection.

    Every token goes through the final layer norm and the visual projection, so token 0 equals the model's
    image_embeds (the same features ComfyUI's CLIP vision gives: comfy/clip_vision.py).
    """
    param = next(model.parameters())
    pixels = clip_preprocess(images.to(param.device, torch.float32), model.config.image_size, mean, std)
    hidden = model.vision_model(pixel_values=pixels.to(param.dtype)).last_hidden_state  # (b, 1+n, hidden)
    return model.visual_projection(model.vision_model.post_layernorm(hidden))  # (b, 1+n, c)
