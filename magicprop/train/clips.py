"""What a training clip source gives: a clip's frames and aligned depth (the synthetic domain in `data`, prepared
shards in `shards`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class ClipData:
    frames: torch.Tensor  # (T, H, W, 3) uint8
    depth: torch.Tensor  # (T, H, W) float in [0, 1], near = 1, aligned for the clip


class ClipSource(Protocol):
    def __len__(self) -> int: ...
    def frames_in(self, index: int) -> int: ...
    def clip(self, index: int) -> ClipData: ...
    def describe(self) -> dict: ...
    def fingerprint(self) -> str:
        """The identity of the clips' content (disk caches built from other data are refused or rebuilt)."""
        ...
