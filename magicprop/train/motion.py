"""Training's motion inputs: each clip's reference carried by flow propagation, estimated once and cached.

A flow-guided PropDPM (``magicprop.propdpm.motion_inputs``) is trained on what inference will give it: flow estimated on
the SOURCE frames with the engine and settings the user runs (never the synthetic domain's exact flow), the checkpoint's
flow propagation strategy, filled pixels blanked to grey, VAE-encoded. References sit at a few fixed positions of
each clip (``anchors``: first, middle, last), so the reference is often far from the target, as in long clips;
for each one the carried latents and validity of every frame are computed once per clip (in memory, or for the whole
source up front into one safetensors file, ``data.motion_cache``, that later runs with the same data, encoders and
estimator load).

In self-supervised training the reference is a source frame, so the residual carry would be an identity (each frame's
own pixels): training carries the reference's own pixels (carry "edit", ``motion_inputs.TRAIN_CARRY``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MagicPropError
from ..log import get_logger
from ..propdpm.motion_inputs import carry_frames, motion_record
from .config import RunConfig
from .encoders import cache_identity

log = get_logger(__name__)


def anchors(frames: int) -> tuple[int, ...]:
    """Reference positions of a clip of `frames` frames: first, middle and last (distinct)."""
    return tuple(sorted({0, (frames - 1) // 2, frames - 1}))


@dataclass
class ClipMotion:
    anchors: tuple[int, ...]
    latents: torch.Tensor  # (A, T, 4, h, w) fp16: carried latents of every frame, per anchor reference
    valid: torch.Tensor  # (A, T, 1, h, w) fp16: carried share of each latent cell

    def carried(self, ref: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """((1, 4, h, w), (1, 1, h, w)) float32: frame k's carried latent and validity for the reference at `ref`."""
        if ref not in self.anchors:
            raise MagicPropError(f"reference frame {ref} is not one of the clip's motion anchors {list(self.anchors)}.")
        a = self.anchors.index(ref)
        return self.latents[a, k : k + 1].float(), self.valid[a, k : k + 1].float()


class MotionCache:
    """Carried latents per clip, computed on first use with `engine` (flow propagation `strategy`, `carry`)."""

    def __init__(self, source, encoders, engine, strategy: str, carry: str, disk: str | Path | None = None,
                 progress: bool = False) -> None:
        self.source, self.encoders, self.engine = source, encoders, engine
        self.strategy, self.carry = strategy, carry
        self.store: dict[int, ClipMotion] = {}
        if disk is not None:
            self._load_or_build(Path(disk), progress)

    @property
    def record(self) -> dict:
        return motion_record(self.engine.settings, self.strategy, self.carry)

    def compute(self, index: int) -> ClipMotion:
        clip = self.source.clip(index)
        frames = clip.frames.float() / 255.0
        motion = self.engine.consecutive(frames)
        pos = anchors(frames.shape[0])
        latents, valid = [], []
        for r in pos:
            c = carry_frames(frames, frames[r : r + 1], [r], self.engine, self.encoders.encode, motion,
                             self.strategy, self.carry)
            latents.append(c.latents.half())
            valid.append(c.valid.half())
        return ClipMotion(pos, torch.stack(latents), torch.stack(valid))

    def get(self, index: int) -> ClipMotion:
        hit = self.store.get(index)
        if hit is None:
            hit = self.store[index] = self.compute(index)
        return hit

    def _load_or_build(self, path: Path, progress: bool) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file
        from tqdm.auto import tqdm

        from ..io.fileio import atomic_path

        record = json.dumps(self.record, sort_keys=True)
        data = cache_identity(self.source, self.encoders)
        if path.is_file():
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            stored, stored_data = meta.get("motion"), meta.get("data")
            if stored != record:
                raise MagicPropError(
                    f"data.motion_cache {str(path)!r} holds motion made with {stored}, not {record}: point "
                    "data.motion_cache at another file (or delete it) to compute the motion inputs again."
                )
            if stored_data != data:
                raise MagicPropError(
                    f"data.motion_cache {str(path)!r} holds the motion of other clips or encoders ({stored_data}, not "
                    f"{data}): point data.motion_cache at another file (or delete it) to compute them for this data."
                )
            t = load_file(str(path))
            for i in range(len(self.source)):
                self.store[i] = ClipMotion(tuple(t[f"{i}.anchors"].tolist()), t[f"{i}.latents"], t[f"{i}.valid"])
            return
        tensors = {}
        for i in tqdm(range(len(self.source)), desc="motion inputs", unit="clip", disable=not progress):
            m = self.get(i)
            tensors.update({f"{i}.anchors": torch.tensor(m.anchors), f"{i}.latents": m.latents.contiguous(),
                            f"{i}.valid": m.valid.contiguous()})
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"motion": record, "data": data})
        log.info("wrote the motion inputs of %d clips to %s", len(self.source), path)


def flow_settings(cfg: RunConfig, device="cpu"):
    """The FlowSettings of a flow-guided run (checked: unknown estimator, preset, strategy or carry is one line)."""
    from ..motion.engine import FlowEngine, FlowSettings
    from ..motion.propagate import CARRIES, STRATEGIES

    t = cfg.train
    if t.flow_strategy not in STRATEGIES:
        raise MagicPropError(f"train.flow_strategy={t.flow_strategy!r}: expected one of {sorted(STRATEGIES)}.")
    if t.flow_carry not in CARRIES:
        raise MagicPropError(f"train.flow_carry={t.flow_carry!r}: expected one of {list(CARRIES)}.")
    if not 0.0 <= t.motion_noise_augmentation < 1.0:
        raise MagicPropError(f"train.motion_noise_augmentation={t.motion_noise_augmentation}: expected a level in "
                             "[0, 1).")
    settings = FlowSettings(estimator=t.flow_estimator, preset=t.flow_preset, weights=t.flow_weights,
                            work_size=t.flow_work_size, device=str(device))
    FlowEngine(settings)  # its own one-line checks, before any model work
    return settings
