"""The refine CLI's diffusers refiner (magicprop.refine.diffusers_backend.DiffusersRefiner) against FlowRefine's host
refiner (nodes/refine/refine.py ComfyFrameRefiner on comfy.sample.sample), the same tiny SD1.5-shaped weights, frames,
seed and denoise through the same core loop (flow_refine)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from magicprop.refine.core import RefineSettings, flow_refine

pytestmark = pytest.mark.host

PROMPT, NEGATIVE, K, REF, STEPS, CFG = "a watercolor painting", "blurry", 3, 1, 3, 3.0


@pytest.fixture(scope="module")
def both(comfy_host, tmp_path_factory):
    """One tiny SD (diffusers folder) loaded by the CLI's SDModels and handed to the host as its MODEL and VAE."""
    from harness.comfy_models import comfy_sd15_model, comfy_vae
    from magicprop.propdpm.unet_config import comfy_unet_config
    from magicprop.refine.diffusers_backend import SDModels
    from magicprop.tiny import save_tiny_sd

    paths = save_tiny_sd(tmp_path_factory.mktemp("tiny_sd"), controlnet=False)
    models = SDModels.load(paths["sd"])
    model = comfy_sd15_model(comfy_unet_config(dict(models.unet.config)), models.unet)
    return models, model, comfy_vae(models.encoders.vae)


def frames() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return F.interpolate(torch.rand(K, 3, 8, 8, generator=g), size=(64, 64), mode="bicubic",
                         align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)


def run_both(comfy_host, both, sampler: str, scheduler: str, denoise: float, scheduler_config: dict | None = None,
             filled_denoise: float | None = None):
    from magicprop.refine.diffusers_backend import DiffusersRefiner

    models, model, vae = both
    node = comfy_host.module("nodes.refine.refine")
    if scheduler_config is not None:
        models = dataclasses.replace(models, scheduler_config={**models.scheduler_config, **scheduler_config})
    filled, fd = None, denoise if filled_denoise is None else filled_denoise
    if fd > denoise:
        filled = torch.zeros(K, 64, 64)
        filled[:, 16:40, 24:56] = 1
        model = model.clone()  # as FlowRefine.execute does
        model.set_model_denoise_mask_function(node.refine_mask_function)
    settings = RefineSettings(seed=5, noise="per_frame", denoise=denoise, filled_denoise=fd)
    clip = frames()
    ours = flow_refine(clip, filled, [REF], DiffusersRefiner(models, PROMPT, NEGATIVE, STEPS, CFG, denoise, fd),
                       settings)
    host_refiner = node.ComfyFrameRefiner(
        model, vae, [[models.encode_prompt(PROMPT), {}]], [[models.encode_prompt(NEGATIVE), {}]], K, STEPS, CFG,
        sampler, scheduler, denoise, fd)
    theirs = flow_refine(clip, filled, [REF], host_refiner, settings)
    return ours, theirs, clip


SD15_LAST_STEP = ("SD1.5's scheduler config (set_alpha_to_one=False, as save_tiny_sd writes it) makes diffusers' last "
                  "DDIM step end at alpha_cumprod[0] (sigma 0.029) instead of the host's sigma 0: measured 0.023 max")
LEVELS = ("per-pixel levels (filled_denoise > denoise): the host's denoise-mask path and the diffusers hold differ; "
          "measured 0.75 max on the filled-region run, cause not yet found")


@pytest.mark.parametrize("sampler,alpha_to_one,filled_denoise", [
    ("ddim", True, None),
    ("euler", True, None),  # the host's ddim is its euler
    pytest.param("ddim", False, None, marks=pytest.mark.xfail(strict=True, reason=SD15_LAST_STEP)),
    pytest.param("euler", True, 0.8, marks=pytest.mark.xfail(strict=True, reason=LEVELS)),
])
def test_diffusers_refiner_matches_flow_refine_in_the_host(comfy_host, both, sampler, alpha_to_one, filled_denoise):
    """DDIM (eta 0) is Euler on the probability-flow ODE in sigma, and the host's ddim_uniform schedule is diffusers'
    "leading" spacing with steps_offset 1; denoise cuts both to the last `steps` of int(steps / denoise): with a DDIM
    config whose last step ends at sigma 0 (set_alpha_to_one) every refined frame agrees to 1e-4."""
    ours, theirs, clip = run_both(comfy_host, both, sampler, "ddim_uniform", 0.5, {"set_alpha_to_one": alpha_to_one},
                                  filled_denoise)
    assert torch.equal(ours[REF], clip[REF]) and torch.equal(theirs[REF], clip[REF])
    others = [k for k in range(K) if k != REF]
    assert (ours[others] - clip[others]).abs().mean() > 0.05, "the frames were refined"
    assert float((ours - theirs).detach().abs().max()) < 1e-4
