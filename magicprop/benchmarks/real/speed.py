"""The speed section of `bench real`: flow estimation and propagation frames per second on the CPU."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ...errors import MagicPropError
from ...motion.engine import FlowEngine, FlowSettings, import_cv2
from .clips import load_clip, resize_long_side
from .edits import false_colour


def measure_speed(estimator: str, strategy: str, size: int = 512, frames: int = 17) -> dict:
    """Frames per second at size x size on the CPU: flow estimation (forward and backward of every consecutive pair)
    and flow propagation (from a middle reference, so both directions; including any flow to the keyframe)."""
    from ...motion.propagate import DEFAULT_CARRY, DEFAULT_FILL, flow_propagate

    clip = load_clip("bigbuckbunny", long_side=10_000, frames=frames - 1)  # full size
    h, w = clip.shape[1:3]
    side = min(h, w)
    clip = clip[:, (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    clip = resize_long_side(clip, size)
    engine = FlowEngine(FlowSettings(estimator=estimator, work_size=size))
    mid = frames // 2
    ref = false_colour(clip[mid : mid + 1])
    engine.flow(clip[:1], clip[1:2])  # build the solver outside the timing
    t0 = time.perf_counter()
    motion = engine.consecutive(clip)
    t1 = time.perf_counter()
    flow_propagate(clip, ref, [mid], engine, motion=motion, strategy=strategy)
    t2 = time.perf_counter()
    cv2 = import_cv2()
    return {"size": [size, size], "frames": frames, "estimator": estimator, "strategy": strategy,
            "carry": DEFAULT_CARRY, "fill": DEFAULT_FILL,
            "flow_fps": frames / (t1 - t0), "propagate_fps": frames / (t2 - t1), "total_fps": frames / (t2 - t0),
            "fills": fill_seconds(clip, motion, engine, strategy),
            "torch_threads": torch.get_num_threads(), "cv2_threads": cv2.getNumThreads(),
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}


def fill_seconds(clip: torch.Tensor, motion, engine: FlowEngine, strategy: str) -> dict:
    """Seconds per frame of flow propagation with each fill, the edit a stylization of the middle frame (one the
    colour mapping cannot explain, so the learned fill trains and renders); the learned fill's training alone."""
    from ...motion.colour import fit_edit_mapping
    from ...motion.propagate import FILLS, flow_propagate
    from ...motion.translate import fit_edit_translation
    from ..hard import stylization

    mid = clip.shape[0] // 2
    ref = stylization(clip[mid])
    out = {}
    for fill in FILLS:
        t0 = time.perf_counter()
        flow_propagate(clip, ref[None], [mid], engine, motion=motion, strategy=strategy, fill=fill)
        out[fill] = {"seconds_per_frame": (time.perf_counter() - t0) / clip.shape[0]}
    t0 = time.perf_counter()
    fit_edit_translation(clip[mid], ref, fit_edit_mapping(clip[mid], ref).global_only())
    out["learned"]["training_seconds"] = time.perf_counter() - t0
    return out


def pair_seconds(estimators: Sequence[str], long_side: int, flow_weights: Path | None = None, pairs: int = 3) -> dict:
    """Seconds per frame pair (one direction) of each estimator at the benchmark's resolution (bigbuckbunny)."""
    clip = load_clip("bigbuckbunny", long_side, pairs)
    out = {}
    for est in estimators:
        weights = str(flow_weights) if est == "raft" and flow_weights is not None else None
        try:
            engine = FlowEngine(FlowSettings(estimator=est, weights=weights))
        except MagicPropError:
            continue
        engine.flow(clip[:1], clip[1:2])  # build the solver outside the timing
        t0 = time.perf_counter()
        engine.flow(clip[:-1], clip[1:])
        out[est] = (time.perf_counter() - t0) / pairs
    return out
