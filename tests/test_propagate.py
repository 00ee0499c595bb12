"""The autoregressive loop: any reference index, per-frame seeds, forward/backward chains (MagicProp eq. 6)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from chains import iter_chain

from magicprop.errors import MagicPropError
from magicprop.keyframes import chain_order
from magicprop.propdpm.checkpoint import load_checkpoint
from magicprop.propdpm.diffusers_backend import DiffusersDenoiser
from magicprop.propdpm.loop import propagate
from magicprop.seeding import frame_seed

K, R = 7, 3


@pytest.fixture(scope="module")
def run_parts(tiny_models):
    ckpt = load_checkpoint(tiny_models["checkpoint"])
    unet = ckpt.build_unet().eval()
    torch.manual_seed(0)
    depth = torch.rand(K, 1, 4, 6)
    ref = torch.randn(1, 4, 4, 6)
    tokens = torch.randn(1, 1 + 6, ckpt.config.adapter.token_dim)
    denoiser = DiffusersDenoiser(unet, ckpt.config, tokens, steps=3, cfg=2.0)
    return denoiser, depth, ref


def test_mid_clip_reference_equals_forward_and_backward_chains(run_parts):
    denoiser, depth, ref = run_parts
    out = propagate(denoiser, ref, depth, R, seed=11, max_batch=1)
    batched = propagate(denoiser, ref, depth, R, seed=11)  # forward and backward frames of a round in one call
    assert out.shape == (K, 4, 4, 6)
    assert torch.equal(out[R], ref[0])
    forward = dict(iter_chain(denoiser, list(range(R, K)), ref, depth, seed=11))
    backward = dict(iter_chain(denoiser, list(range(R, -1, -1)), ref, depth, seed=11))
    assert sorted(forward) == list(range(R + 1, K)) and sorted(backward) == list(range(R))
    for k, latent in {**forward, **backward}.items():
        assert torch.equal(out[k], latent[0]), k
    print("batched - sequential", (batched - out).abs().max().item())
    torch.testing.assert_close(batched, out, rtol=0, atol=1e-4)
    # a later frame really depends on its predecessor: the chains are autoregressive
    assert not torch.equal(out[R + 2], out[R + 1])


def test_same_seed_same_output_other_seed_other_output(run_parts):
    denoiser, depth, ref = run_parts
    a = propagate(denoiser, ref, depth, R, seed=11)
    b = propagate(denoiser, ref, depth, R, seed=11)
    c = propagate(denoiser, ref, depth, R, seed=12)
    assert torch.equal(a, b)
    others = [k for k in range(K) if k != R]
    assert all((a[k] - c[k]).abs().max() > 1e-3 for k in others)


def test_frame_noise_depends_on_seed_and_index_only(run_parts):
    denoiser, depth, ref = run_parts
    # frame 6 from the reference at 3 equals frame 6 from a shorter forward chain started at 5 with the same input
    full = dict(iter_chain(denoiser, [3, 4, 5, 6], ref, depth, seed=5))
    short = dict(iter_chain(denoiser, [5, 6], full[5], depth, seed=5))
    assert torch.equal(full[6], short[6])
    seeds = {frame_seed(s, k) for s in range(20) for k in range(50)}
    assert len(seeds) == 1000 and all(0 <= x < 2**63 for x in seeds)


def test_callback_sees_every_frame_and_can_cancel(run_parts):
    denoiser, depth, ref = run_parts
    seen = []
    propagate(denoiser, ref, depth, 0, seed=1, callback=lambda k, lat: seen.append(k))
    assert seen == list(range(K))

    class Stop(Exception):
        pass

    def stop_after_two(k, lat):
        if k == 1:
            raise Stop

    with pytest.raises(Stop):
        propagate(denoiser, ref, depth, 0, seed=1, callback=stop_after_two)


def test_bad_indices_are_refused(run_parts):
    denoiser, depth, ref = run_parts
    with pytest.raises(MagicPropError, match=r"reference_index=7 is out of range.*0 <= reference_index <= 6"):
        propagate(denoiser, ref, depth, K, seed=0)
    with pytest.raises(MagicPropError, match="at least 1 frame"):
        chain_order(0, 0)
    with pytest.raises(MagicPropError, match="same size"):
        propagate(denoiser, torch.zeros(1, 4, 6, 6), depth, 0, seed=0)
    assert chain_order(0, 1) == [] and chain_order(2, 3) == [[2, 1, 0]]


class CopyPrevious(torch.nn.Module):
    """An oracle v-predictor whose clean sample is the previous-frame latent channels of its input."""

    def __init__(self, scheduler):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.ab = scheduler.alphas_cumprod

    def forward(self, x, t, encoder_hidden_states):
        a = self.ab[int(t)]
        x_t, x0 = x[:, :4], x[:, 4:8]
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return SimpleNamespace(sample=a.sqrt() * eps - (1 - a).sqrt() * x0)


@pytest.mark.parametrize("steps", [1, 4, 25])
def test_ddim_trailing_recovers_the_oracle_sample(tiny_models, steps):
    """With a perfect v-predictor the sampler lands exactly on its x0, from pure noise (zero terminal SNR)."""
    config = load_checkpoint(tiny_models["checkpoint"]).config
    from magicprop.propdpm.schedule import train_scheduler

    oracle = CopyPrevious(train_scheduler(config.schedule))
    denoiser = DiffusersDenoiser(oracle, config, torch.zeros(1, 3, 32), steps=steps)
    torch.manual_seed(0)
    depth, ref = torch.rand(4, 1, 4, 4), torch.randn(1, 4, 4, 4)
    out = propagate(denoiser, ref, depth, 0, seed=3)
    for k in range(4):
        torch.testing.assert_close(out[k], ref[0], atol=1e-4, rtol=1e-4)
