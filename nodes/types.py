"""The pack's custom socket type and the marker that appearance conditioning carries."""

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

Adapter = io.Custom("MAGICPROP_ADAPTER")
"""The appearance adapter of a PropDPM checkpoint (nodes.model.AdapterHandle)."""

APPEARANCE_KEY = "magicprop_appearance"
"""Conditioning-dict key set by AppearanceAdapterEncode; the propagation node refuses conditioning without it."""


@dataclass(frozen=True)
class AppearanceInfo:
    checkpoint: str
    """Name of the PropDPM checkpoint whose adapter made the tokens."""
    token_dim: int
    unconditional: bool
    """True for the negative (null) appearance."""
