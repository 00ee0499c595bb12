"""The core's "denoise one frame" protocol on ComfyUI's own samplers (comfy.sample.sample).

Per frame: the spatial condition (``magicprop.conditioning.condition_for``) goes into every conditioning dict under
CONCAT_KEY, a ControlNet chain gets that frame's hint, the frame's noise is the core's ``frame_noise`` (the same draw as
``comfy.sample.prepare_noise``), and the sampler's own noise is seeded with the frame seed.
"""

from __future__ import annotations

from typing import Callable

import comfy.model_management
import comfy.sample
import torch

from ..magicprop.conditioning import condition_for
from ..magicprop.config import PropDPMConfig
from ..magicprop.errors import MagicPropError
from ..magicprop.propagate import FrameRequest, frame_noise
from .model import CONCAT_KEY

StepCallback = Callable[[int, int, int, torch.Tensor], None]
"""(frame index, step, total steps, x0 prediction) after each sampler step."""


def control_chain(control) -> list:
    """The ControlNets of a conditioning's chain, outermost first."""
    chain = []
    while control is not None:
        chain.append(control)
        control = control.previous_controlnet
    return chain


def check_control_hints(conditionings: list, num_frames: int) -> None:
    """Every ControlNet hint must have 1 frame (used for all) or one per video frame; raise before sampling."""
    for conditioning in conditionings:
        for _, d in conditioning:
            for cnet in control_chain(d.get("control")):
                hint = cnet.cond_hint_original
                n = 1 if hint is None else hint.shape[0]
                if n not in (1, num_frames):
                    raise MagicPropError(
                        f"a ControlNet on the conditioning has a hint of {n} frames for a clip of {num_frames}: "
                        "give it one image (used for every frame) or one image per frame."
                    )


def slice_control(control, index: int, num_frames: int, cache: dict):
    """A copy of a ControlNet chain whose K-frame hints are cut to frame `index` (1-frame hints stay whole).

    ComfyUI would broadcast hint[0] to a one-frame batch, so frame-by-frame sampling needs per-frame copies.
    `cache` keeps positive and negative sharing one copy, as ControlNetApplyAdvanced made them share one.
    """
    if control is None:
        return None
    if id(control) in cache:
        return cache[id(control)]
    copy = control.copy()
    copy.set_previous_controlnet(slice_control(control.previous_controlnet, index, num_frames, cache))
    hint = control.cond_hint_original
    if hint is not None and hint.shape[0] == num_frames and num_frames > 1:
        copy.cond_hint_original = hint[index : index + 1]
    cache[id(control)] = copy
    return copy


def frame_conditioning(conditioning: list, index: int, num_frames: int, cache: dict,
                       extra: dict | None = None) -> list:
    """The conditioning of one frame: its ControlNet hints selected, `extra` keys (e.g. its spatial condition) added."""
    out = []
    for tokens, d in conditioning:
        d = {**d, **(extra or {})}
        if d.get("control") is not None:
            d["control"] = slice_control(d["control"], index, num_frames, cache)
        out.append([tokens, d])
    return out


class ComfyFrameDenoiser:
    """FrameDenoiser running ComfyUI's sampler and scheduler registries on a PropDPM MODEL."""

    def __init__(
        self,
        model,
        positive: list,
        negative: list,
        config: PropDPMConfig,
        num_frames: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        source_latents: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        self.model, self.positive, self.negative, self.config = model, positive, negative, config
        self.num_frames, self.steps, self.cfg = num_frames, steps, cfg
        self.sampler_name, self.scheduler = sampler_name, scheduler
        self.source_latents, self.masks = source_latents, masks  # masks: (1 or K, H, W) at pixel size
        self.on_step = on_step

    def __call__(self, request: FrameRequest) -> torch.Tensor:
        k = request.index
        concat = condition_for(request, self.config)  # (1, 6, h, w), the UNet's input space
        cache: dict = {}
        positive = frame_conditioning(self.positive, k, self.num_frames, cache, {CONCAT_KEY: concat})
        negative = frame_conditioning(self.negative, k, self.num_frames, cache, {CONCAT_KEY: concat})
        noise = frame_noise(request.prev_latent.shape, request.seed)
        latent_image = torch.zeros_like(noise)
        mask = None
        if self.masks is not None:
            # ComfyUI's own inpainting: outside the mask every step is pulled back to the source latent
            latent_image = self.source_latents[k : k + 1].to(noise)
            mask = self.masks[min(k, self.masks.shape[0] - 1)][None]
        callback = None
        if self.on_step is not None:
            def callback(step, x0, x, total_steps):
                self.on_step(k, step + 1, total_steps, x0)
        return comfy.sample.sample(
            self.model, noise, self.steps, self.cfg, self.sampler_name, self.scheduler, positive, negative,
            latent_image, denoise=1.0, noise_mask=mask, callback=callback, disable_pbar=True, seed=request.seed,
        ).to(comfy.model_management.intermediate_device())
