"""The core's "denoise one frame" protocol on ComfyUI's own samplers (comfy.sample.sample).

Per frame: the spatial condition (``magicprop.propdpm.conditioning.condition_for``) goes into every conditioning dict
under CONCAT_KEY, a ControlNet chain gets that frame's hint, the frame's noise is the core's ``frame_noise`` (the same
draw as ``comfy.sample.prepare_noise``), and the sampler's own noise is seeded with the frame seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import comfy.model_management
import comfy.sample
import torch

from ...magicprop.log import get_logger
from ...magicprop.propdpm.conditioning import condition_for
from ...magicprop.propdpm.config import PropDPMConfig
from ...magicprop.propdpm.loop import FrameRequest, Job, denoise_frame
from ...magicprop.seeding import frame_noise
from ..common.conditioning import frame_conditioning
from .model import CONCAT_KEY

log = get_logger(__name__)

StepCallback = Callable[[list[int], int, int, torch.Tensor], None]
"""(frame indices of the batch, step, total steps, (B, C, h, w) x0 prediction) after each sampler step."""


def stack_conditionings(conditionings: list[list]) -> list | None:
    """One conditioning whose entries hold the rows of several (one per sample of a batch, each a row of the same
    conditioning, e.g. one keyframe's appearance each), or None when they differ in more than their tokens."""
    first = conditionings[0]
    if any(len(c) != len(first) or any(d is not d0 for (_, d), (_, d0) in zip(c, first)) for c in conditionings):
        return None
    return [[torch.cat([c[j][0] for c in conditionings]), d] for j, (_, d) in enumerate(first)]


DETERMINISTIC_SAMPLERS = ("euler", "heun", "heunpp2", "dpm_2", "lms", "dpmpp_2m", "ipndm", "ipndm_v", "deis", "ddim",
                          "uni_pc", "uni_pc_bh2", "res_multistep", "gradient_estimation")
"""Samplers that draw no noise after the initial one: a batched round equals frames made one at a time. The others
draw their step noise for the whole batch from the frame seed of its first frame, so batching changes their draws.
Written by hand (the host does not say which samplers draw noise); tests/test_host_parity.py checks it against the
host's sampler names and signatures."""


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

    def _shares_sampler(self, other: ComfyFrameDenoiser) -> bool:
        """Whether `other` samples as this one does: one sampler call can serve both."""
        return all(getattr(other, a) is getattr(self, a) for a in ("model", "source_latents", "masks")) \
            and (other.steps, other.cfg, other.sampler_name, other.scheduler, other.num_frames, other.on_step) == \
            (self.steps, self.cfg, self.sampler_name, self.scheduler, self.num_frames, self.on_step)

    def denoise(self, jobs: Sequence[Job]) -> torch.Tensor:
        """FrameDenoiser: the frames of a round (one per chain) in ONE comfy.sample.sample call: per-sample spatial
        conditions, appearance tokens (each chain's keyframe), ControlNet hints (each frame's own) and initial noise;
        with cfg > 1 the host batches cond and uncond as usual. One frame: this denoiser's own conditionings."""
        if len(jobs) == 1:
            return self.sample([jobs[0][1]], self.positive, self.negative)
        positive = stack_conditionings([d.positive for d, _ in jobs])
        negative = stack_conditionings([d.negative for d, _ in jobs])
        if positive is None or negative is None or not all(self._shares_sampler(d) for d, _ in jobs):
            return torch.cat([denoise_frame(d, r) for d, r in jobs])
        return self.sample([r for _, r in jobs], positive, negative)

    def sample(self, requests: list[FrameRequest], positive: list, negative: list) -> torch.Tensor:
        """(B, 4, h, w): the frames of `requests` sampled as one batch (`positive`/`negative` hold one row or B)."""
        indices = [r.index for r in requests]
        concat = torch.cat([condition_for(r, self.config) for r in requests])  # (B, 6, h, w), the UNet's input space
        cache: dict = {}
        positive = frame_conditioning(positive, indices, self.num_frames, cache, {CONCAT_KEY: concat})
        negative = frame_conditioning(negative, indices, self.num_frames, cache, {CONCAT_KEY: concat})
        noise = torch.cat([frame_noise(r.prev_latent.shape, r.seed) for r in requests])
        latent_image = torch.zeros_like(noise)
        mask = None
        if self.masks is not None:
            # ComfyUI's own inpainting: outside the mask every step is pulled back to the source latent
            latent_image = self.source_latents[indices].to(noise)
            mask = self.masks[[min(k, self.masks.shape[0] - 1) for k in indices]]
        if len(requests) > 1 and self.sampler_name not in DETERMINISTIC_SAMPLERS:
            log.info("sampler %s draws step noise: batched frames %s share one draw seeded by frame %d (max_batch 1 "
                     "gives each frame its own)", self.sampler_name, indices, indices[0])
        callback = None
        if self.on_step is not None:
            def callback(step, x0, x, total_steps):
                self.on_step(indices, step + 1, total_steps, x0)
        return comfy.sample.sample(
            self.model, noise, self.steps, self.cfg, self.sampler_name, self.scheduler, positive, negative,
            latent_image, denoise=1.0, noise_mask=mask, callback=callback, disable_pbar=True, seed=requests[0].seed,
        ).to(comfy.model_management.intermediate_device())
