"""The pack's custom socket types and the marker that appearance conditioning carries."""

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

Adapter = io.Custom("MAGICPROP_ADAPTER")
"""The appearance adapter of a PropDPM checkpoint (nodes.propdpm.model.AdapterHandle)."""

Flow = io.Custom("MAGICPROP_FLOW")
"""A clip's consecutive forward and backward flow with validity, fp16 on the CPU, and the estimator that made it
(magicprop.motion.engine.Motion)."""

ExternalFlow = io.Custom("OPTICAL_FLOW")
"""controlnet_aux's optical flow (e.g. its Unimatch node): a (K-1, H, W, 2) float tensor in pixels, x then y, between
consecutive frames; the tensor does not say in which direction."""

APPEARANCE_KEY = "magicprop_appearance"
"""Conditioning-dict key set by AppearanceAdapterEncode; the propagation node refuses conditioning without it."""


@dataclass(frozen=True)
class AppearanceInfo:
    checkpoint: str
    """Name of the PropDPM checkpoint whose adapter made the tokens."""
    token_dim: int
    unconditional: bool
    """True for the negative (null) appearance."""
