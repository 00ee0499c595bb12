"""The same checkpoint and inputs give the same numbers through ComfyUI as through the host-free core."""

from __future__ import annotations

import pytest
import torch
from host_models import comfy_clip_vision, comfy_vae

from magicprop.propdpm.diffusers_backend import DiffusersDenoiser, StandaloneModels
from magicprop.propdpm.loop import FrameRequest, denoise_frame
from magicprop.seeding import frame_seed

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def both(comfy_host, tiny_models, tmp_path_factory):
    """The tiny PropDPM through the core (diffusers) and through the pack's ComfyUI loader."""
    model_mod = comfy_host.module("nodes.propdpm.model")
    patcher, handle = model_mod.load_propdpm(str(tiny_models["checkpoint"]), "fp32")
    core = StandaloneModels.load(tiny_models["checkpoint"], tiny_models["vae"], tiny_models["clip_vision"])
    return core, patcher, handle


def _request(seed=3, k=4):
    torch.manual_seed(seed)
    return FrameRequest(k, k - 1, torch.randn(1, 4, 6, 8), torch.rand(1, 1, 6, 8), torch.rand(1, 1, 6, 8),
                        frame_seed(seed, k))


@pytest.mark.parametrize("t", [999, 700, 250, 20])
def test_model_prediction_matches_core(comfy_host, both, t):
    from magicprop.propdpm.diffusers_backend import condition_for
    from magicprop.propdpm.schedule import train_scheduler, x0_from_v

    core, patcher, _ = both
    config = core.config
    req = _request()
    cond = condition_for(req, config)
    torch.manual_seed(t)
    x_t = torch.randn(1, 4, 6, 8)
    tokens = torch.randn(1, 13, config.adapter.token_dim)
    a = train_scheduler(config.schedule).alphas_cumprod[t]
    with torch.no_grad():
        v = core.unet(torch.cat([x_t, cond], 1), torch.tensor(t), encoder_hidden_states=tokens).sample
    x0_core = x0_from_v(x_t, v, a)

    base = patcher.model
    sigma = base.model_sampling.sigmas[t]
    # the pack's concat_cond path: the condition arrives as a conditioning key
    concat_key = comfy_host.module("nodes.propdpm.model").CONCAT_KEY
    c_concat = base.concat_cond(**{concat_key: cond, "noise": x_t, "device": torch.device("cpu")})
    assert torch.equal(c_concat, cond)
    scale = (1 + sigma**2) ** 0.5
    with torch.no_grad():
        x0_comfy = base.apply_model(x_t * scale, sigma[None], c_concat=c_concat, c_crossattn=tokens)
    # the model's own prediction, v, recovered from ComfyUI's denoised output with ComfyUI's sigma
    v_comfy = (x_t - x0_comfy * scale) / sigma
    torch.testing.assert_close(v_comfy, v, atol=1e-4, rtol=1e-4)
    if t < 999:  # at t = T ComfyUI keeps alpha_bar = 4.9e-8 instead of 0, which moves x0 by ~2e-4 |x_t|
        torch.testing.assert_close(x0_comfy, x0_core, atol=1e-4, rtol=1e-4)


def test_appearance_tokens_match_core(comfy_host, both, tiny_models, tmp_path):
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionModelWithProjection

    core, _, handle = both
    appearance = comfy_host.module("nodes.propdpm.appearance")
    clip = comfy_clip_vision(CLIPVisionModelWithProjection.from_pretrained(tiny_models["clip_vision"]), tmp_path)
    vae = comfy_vae(AutoencoderKL.from_pretrained(tiny_models["vae"]))
    torch.manual_seed(0)
    reference = torch.rand(1, 48, 80, 3)
    ours = appearance.appearance_tokens(handle, clip, vae, reference)
    expected = core.appearance_tokens(reference, core.encode(reference))
    assert ours.shape == expected.shape == (1, 1 + 6 * 10 // 4, 32)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    # the VAE side alone: ComfyUI's encode equals the core's
    torch.testing.assert_close(vae.encode(reference).float(), core.encode(reference), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_full_frame_sample_matches_core_ddim(comfy_host, both, sampler, cfg):
    core, patcher, handle = both
    denoiser_mod = comfy_host.module("nodes.propdpm.denoiser")
    types = comfy_host.module("nodes.common.types")
    torch.manual_seed(1)
    tokens = torch.randn(1, 13, 32)
    info = types.AppearanceInfo("tiny", 32, False)
    positive = [[tokens, {types.APPEARANCE_KEY: info}]]
    negative = [[torch.zeros_like(tokens), {types.APPEARANCE_KEY: info}]]
    req = _request(seed=5, k=2)
    ours = denoise_frame(denoiser_mod.ComfyFrameDenoiser(patcher, positive, negative, core.config, 8, 10, cfg, sampler,
                                                         "simple"), req)
    theirs = denoise_frame(DiffusersDenoiser(core.unet, core.config, tokens, steps=10, cfg=cfg), req)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-3)
    assert ours.abs().mean() > 0.1


def test_the_deterministic_sampler_list_names_the_hosts_samplers(comfy_host):
    """The host does not say which samplers draw step noise, so DETERMINISTIC_SAMPLERS is written by hand: every name
    in it is one of the host's samplers, and none of its k-diffusion samplers takes a noise sampler except
    res_multistep (whose wrapper fixes its eta at 0: no step noise)."""
    import inspect

    import comfy.k_diffusion.sampling
    import comfy.samplers

    names = comfy_host.module("nodes.propdpm.denoiser").DETERMINISTIC_SAMPLERS
    assert set(names) <= set(comfy.samplers.KSampler.SAMPLERS), set(names) - set(comfy.samplers.KSampler.SAMPLERS)
    noisy = [n for n in names if "noise_sampler" in inspect.signature(
        getattr(comfy.k_diffusion.sampling, f"sample_{n}", lambda: None)).parameters]
    assert noisy == ["res_multistep"], noisy
    assert "eta" not in inspect.signature(comfy.k_diffusion.sampling.sample_res_multistep).parameters
