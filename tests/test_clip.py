"""CLIP input is the whole frame resized to a square, exactly as ComfyUI's clip_preprocess(crop=False) makes it."""

from __future__ import annotations

import pytest
import torch

from magicprop.propdpm.clip import clip_preprocess, clip_spec_of, clip_tokens, projection_fingerprint
from magicprop.tiny import tiny_clip


@pytest.mark.parametrize("hw", [(224, 224), (64, 160), (272, 640), (37, 23)])
def test_preprocess_equals_comfyui(comfy_path, hw):
    from comfy.clip_model import clip_preprocess as comfy_preprocess

    torch.manual_seed(0)
    images = torch.rand(2, *hw, 3)
    ours = clip_preprocess(images, 224)
    theirs = comfy_preprocess(images, size=224, crop=False)
    assert ours.shape == (2, 3, 224, 224)
    assert torch.equal(ours, theirs)


def test_tokens_are_projected_and_token_zero_is_the_image_embedding():
    model = tiny_clip(0)
    images = torch.rand(2, 40, 72, 3, generator=torch.Generator().manual_seed(0))
    tokens = clip_tokens(model, images)
    assert tokens.shape == (2, 17, 32)
    with torch.no_grad():
        embeds = model(pixel_values=clip_preprocess(images, 32)).image_embeds
    torch.testing.assert_close(tokens[:, 0], embeds, rtol=1e-5, atol=1e-6)


def test_fingerprint_is_dtype_robust_and_recorded():
    model = tiny_clip(0)
    w = model.visual_projection.weight
    assert projection_fingerprint(w) == projection_fingerprint(w.half())
    assert projection_fingerprint(w) != projection_fingerprint(tiny_clip(1).visual_projection.weight)
    spec = clip_spec_of(model)
    assert (spec.token_dim, spec.num_tokens, spec.image_size, spec.crop) == (32, 17, 32, "none")
