"""The appearance adapter against an independent functional computation (MagicProp section 3.3.1, Listing 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from magicprop.errors import MagicPropError
from magicprop.propdpm.adapter import AdapterConfig, AppearanceAdapter


def functional_tokens(sd: dict[str, torch.Tensor], clip: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """The adapter written out with plain conv2d / max_pool2d / interpolate / cat, from its weights."""
    b, n1, c = clip.shape
    side = int(round((n1 - 1) ** 0.5))
    h, w = latent.shape[-2:]
    patches = clip[:, 1:].reshape(b, side, side, c).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
    patches = F.silu(F.conv2d(patches, sd["clip_down.0.weight"], sd["clip_down.0.bias"]))
    patches = F.silu(F.conv2d(patches, sd["clip_down.2.weight"], sd["clip_down.2.bias"]))
    lat = F.silu(F.conv2d(latent, sd["latent_down.0.weight"], sd["latent_down.0.bias"], padding=1))
    lat = F.max_pool2d(lat, 2)
    lat = F.silu(F.conv2d(lat, sd["latent_down.3.weight"], sd["latent_down.3.bias"]))
    mixed = F.silu(F.conv2d(torch.cat([patches, lat], 1), sd["mix.0.weight"], sd["mix.0.bias"], padding=1))
    mixed = F.conv2d(mixed, sd["mix.2.weight"], sd["mix.2.bias"], padding=1)
    return torch.cat([clip[:, :1], mixed.flatten(2).transpose(1, 2)], dim=1)


@pytest.mark.parametrize("token_dim,grid", [(32, 4), (768, 16)])
@pytest.mark.parametrize("latent_hw", [(32, 32), (40, 24)])
def test_adapter_matches_functional_reference(token_dim, grid, latent_hw):
    torch.manual_seed(0)
    adapter = AppearanceAdapter(AdapterConfig(token_dim=token_dim)).eval()
    clip = torch.randn(2, 1 + grid * grid, token_dim)
    latent = torch.randn(2, 4, *latent_hw)
    with torch.no_grad():
        out = adapter(clip, latent)
        ref = functional_tokens(adapter.state_dict(), clip, latent)
    h, w = latent_hw
    assert out.shape == (2, 1 + h * w // 4, token_dim)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:, 0], clip[:, 0]), "the class token must pass through untouched"


def test_adapter_tokens_follow_the_latent_grid():
    """Token i of the fused part belongs to latent cell (i // (w/2), i % (w/2)): a local change stays local."""
    torch.manual_seed(0)
    adapter = AppearanceAdapter(AdapterConfig(token_dim=32)).eval()
    clip, latent = torch.randn(1, 17, 32), torch.randn(1, 4, 16, 24)
    changed = latent.clone()
    changed[..., 12:, 20:] += 3.0  # the bottom-right corner only
    with torch.no_grad():
        diff = (adapter(clip, changed) - adapter(clip, latent))[0, 1:].abs().sum(-1).reshape(8, 12)
    # receptive field: 3x3 conv + 2x pool + two 3x3 convs reach 3 pooled cells from latent (12, 20) -> (6, 10)
    assert diff[:3, :7].max() == 0 and diff[6:, 10:].min() > 0


def test_adapter_errors_are_clear():
    adapter = AppearanceAdapter(AdapterConfig(token_dim=32))
    with pytest.raises(MagicPropError, match="odd side.*multiples of 16"):
        adapter(torch.zeros(1, 17, 32), torch.zeros(1, 4, 15, 16))
    with pytest.raises(MagicPropError, match="square grid"):
        adapter(torch.zeros(1, 1 + 12, 32), torch.zeros(1, 4, 16, 16))
    with pytest.raises(MagicPropError, match="batch mismatch"):
        adapter(torch.zeros(2, 17, 32), torch.zeros(1, 4, 16, 16))
    with pytest.raises(MagicPropError, match=r"expected \(batch, 1 \+ N, 32\)"):
        adapter(torch.zeros(1, 17, 64), torch.zeros(1, 4, 16, 16))
    with pytest.raises(MagicPropError, match="even"):
        AdapterConfig(token_dim=33)
