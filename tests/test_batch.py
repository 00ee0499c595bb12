"""Independent chains batched (host-free backend): each round's frames in one DDIM call give the latents of the
one-frame-at-a-time run (1e-4), `max_batch=1` IS the chain-after-chain run exactly, and every call holds at most
`max_batch` frames, one per chain."""

from __future__ import annotations

import pytest
import torch
from chains import iter_chain

from magicprop.errors import MagicPropError
from magicprop.keyframes import keyframe_plan, meet
from magicprop.propdpm.checkpoint import load_checkpoint
from magicprop.propdpm.diffusers_backend import DiffusersDenoiser
from magicprop.propdpm.loop import Keyframe, propagate, propagate_keyframes

SEED, WINDOW = 7, 2
LAYOUTS = {"mid-clip reference": (9, [4]), "3 keyframes": (9, [0, 4, 8])}


class Counting(DiffusersDenoiser):
    """DiffusersDenoiser that records the size of every sampler call."""

    calls: list

    def batch(self, requests, positive=None):
        self.calls.append(len(requests))
        return super().batch(requests, positive)


@pytest.fixture(scope="module")
def unet_config(tiny_models):
    ckpt = load_checkpoint(tiny_models["checkpoint"])
    return ckpt.build_unet().eval(), ckpt.config


def keyframes(unet_config, keys: list[int], cfg: float, calls: list) -> list[Keyframe]:
    unet, config = unet_config
    g = torch.Generator().manual_seed(0)
    out = []
    for k in keys:  # each keyframe its own appearance tokens and latent
        tokens = torch.randn(1, 1 + 6, config.adapter.token_dim, generator=g)
        den = Counting(unet, config, tokens, steps=3, cfg=cfg)
        den.calls = calls
        out.append(Keyframe(k, torch.randn(1, 4, 4, 6, generator=g), den))
    return out


def chain_after_chain(keys: list[Keyframe], depth: torch.Tensor) -> torch.Tensor:
    """The loop before batching: every chain to its end, then the next one."""
    chains, blends = keyframe_plan([kf.index for kf in keys], depth.shape[0], WINDOW)
    out = torch.empty(depth.shape[0], 4, 4, 6)
    for kf in keys:
        out[kf.index] = kf.latent[0]
    pending: dict = {}
    for chain in chains:
        kf = keys[chain.key]
        for k, latent in iter_chain(kf.denoiser, chain.indices, kf.latent, depth, SEED):
            latent = meet(pending, blends, k, chain.key, latent)
            if latent is not None:
                out[k] = latent[0]
    return out


@pytest.mark.parametrize("cfg", [1.0, 2.0])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_batched_equals_one_frame_at_a_time(unet_config, layout, cfg):
    frames, keys = LAYOUTS[layout]
    depth = torch.rand(frames, 1, 4, 6, generator=torch.Generator().manual_seed(1))
    calls: list = []
    kfs = keyframes(unet_config, keys, cfg, calls)
    chains = len(keyframe_plan(keys, frames, WINDOW)[0])

    sequential = propagate_keyframes(kfs, depth, SEED, WINDOW, max_batch=1)
    assert set(calls) == {1}
    assert torch.equal(sequential, chain_after_chain(kfs, depth)), "max_batch=1 is the chain-after-chain run"

    calls.clear()
    batched = propagate_keyframes(kfs, depth, SEED, WINDOW)
    assert max(calls) == chains, "one call holds the frame of every chain"
    assert sum(calls) == sum(len(c.indices) - 1 for c in keyframe_plan(keys, frames, WINDOW)[0])
    assert len(calls) < sum(calls), "rounds hold several chains' frames"
    torch.testing.assert_close(batched, sequential, atol=1e-4, rtol=0)


def test_max_batch_caps_every_call(unet_config):
    frames, keys = LAYOUTS["3 keyframes"]  # 4 chains
    depth = torch.rand(frames, 1, 4, 6, generator=torch.Generator().manual_seed(2))
    calls: list = []
    kfs = keyframes(unet_config, keys, 1.0, calls)
    capped = propagate_keyframes(kfs, depth, SEED, WINDOW, max_batch=3)
    assert max(calls) == 3 and 1 in calls
    calls.clear()
    torch.testing.assert_close(capped, propagate_keyframes(kfs, depth, SEED, WINDOW), atol=1e-4, rtol=0)
    assert max(calls) == 4


def test_a_bad_max_batch_is_refused_in_one_line(unet_config):
    kf = keyframes(unet_config, [0], 1.0, [])[0]
    with pytest.raises(MagicPropError, match=r"max_batch=-1: expected 0 .*1 = one frame at a time"):
        propagate(kf.denoiser, kf.latent, torch.rand(3, 1, 4, 6), 0, SEED, max_batch=-1)
