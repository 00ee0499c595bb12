"""The command line's flow options (`--flow`, `--flow-preset`, `--flow-weights`, `--flow-size`, `--device`) as
FlowSettings, in one place for every command that estimates flow (`warp`, `refine`); a missing RAFT weights file is
refused naming the flag, before any frame is read."""

from __future__ import annotations

from pathlib import Path

from ..errors import MagicPropError
from ..motion.engine import FlowSettings


def flow_settings(flow: str, preset: str, weights: str | Path | None, size: int, device: str) -> FlowSettings:
    if flow == "raft" and (weights is None or not Path(weights).is_file()):
        given = "not given" if weights is None else f"{str(weights)!r} is not a file"
        raise MagicPropError(f"--flow-weights {given}: --flow raft needs a torchvision RAFT weights file (raft_small "
                             "or raft_large, .safetensors or .pth; nothing is downloaded), or use --flow dis.")
    return FlowSettings(estimator=flow, preset=preset, weights=None if weights is None else str(weights),
                        work_size=size, device=device)
