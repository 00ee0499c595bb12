"""Periodic validation: propagate a held-out clip with the current weights and save a frame strip."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..benchmarks.metrics import psnr
from ..benchmarks.report import strip
from ..benchmarks.seeds import VALIDATION_OFFSET
from ..io.images import save_image
from ..log import get_logger
from ..propdpm.diffusers_backend import FrozenEncoders, StandaloneModels
from ..propdpm.run import propagate_images

log = get_logger(__name__)


def validation_clip(cfg, source, frames: int = 12):
    """(source frames, depth, edited reference, ground truth or None) of the held-out clip."""
    if cfg.data.source == "synthetic":
        from ..synthetic import SceneConfig, make_clip

        scene = SceneConfig(size=cfg.data.synthetic_size, frames=frames)
        pair = make_clip(cfg.data.synthetic_seed + VALIDATION_OFFSET, scene)
        return pair.source.frames, pair.source.depth, pair.edit.frames[:1], pair.edit.frames
    clip = source.clip(len(source) - 1)
    f = clip.frames[:frames].float() / 255
    return f, clip.depth[:frames], f[:1], f


@torch.no_grad()
def validate(cfg, models: tuple, encoders: FrozenEncoders, source, out: Path, step: int, config=None) -> float:
    """Propagate the held-out clip from frame 0; write validation/step-N.png; return the mean PSNR."""
    unet, adapter = models
    frames, depth, reference, truth = validation_clip(cfg, source)
    standalone = StandaloneModels(config, unet, adapter, encoders)
    motion = {}
    if cfg.train.flow_guided:  # the run's own engine (a RAFT checkpoint records only its weights' file name)
        from ..motion.engine import FlowEngine
        from .motion import flow_settings

        motion = {"frames": frames, "engine": FlowEngine(flow_settings(cfg))}
    result = propagate_images(standalone, reference, depth, 0, steps=cfg.train.validation_steps, seed=0, **motion)
    score = float(psnr(result[1:], truth[1:]).mean())
    picks = sorted({0, 1, 2, len(frames) // 2, len(frames) - 1})
    image = strip([frames, truth, result], picks)
    save_image(out / "validation" / f"step-{step:08d}.png", image)
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "val_psnr": score}) + "\n")
    log.info("step %d: validation PSNR %.2f dB", step, score)
    return score
