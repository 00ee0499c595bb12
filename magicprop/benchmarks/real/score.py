"""Scoring `bench real`: PSNR per 30-frame window of every row of one clip (flow rows also on their flow-carried
pixels), with the flow of a clip estimated once for all its edits and strategies."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from ...motion.engine import FlowEngine, FlowSettings
from ..methods import COLOUR_TRANSFER, colour_transfer, flow_row_name
from ..methods import COPY as COPY_METHOD
from ..metrics import psnr, window_means, windows

COPY, TRANSFER = COPY_METHOD.name, COLOUR_TRANSFER.name  # the demo's and bench quality's row names
WINDOW = 30  # frames per scored window


def _window_means(per_frame: torch.Tensor) -> dict[str, float | None]:
    return window_means(per_frame, windows(per_frame.shape[0] - 1, WINDOW))


def _row(per_frame: torch.Tensor) -> dict:
    return {"psnr": _window_means(per_frame),
            "psnr_per_frame": [round(float(v), 3) if math.isfinite(v) else None for v in per_frame.tolist()]}


class MemoFlowEngine(FlowEngine):
    """A FlowEngine whose `flow` remembers its results by the frames' content.

    The flow of a clip depends on its source frames only, so every edit and strategy of one clip reuses the flow
    (consecutive and to the keyframe) estimated for the first: the rows differ only in what they do with it.
    """

    def __init__(self, settings: FlowSettings | None = None):
        super().__init__(settings)
        self.memo: dict[tuple[bytes, bytes, bytes], torch.Tensor] = {}

    def flow(self, a: torch.Tensor, b: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
        a, b = self.prepare(a), self.prepare(b)
        guesses = [b""] * a.shape[0] if init is None else [_digest(g) for g in init.float()]
        keys = [(_digest(x), _digest(y), g) for x, y, g in zip(a, b, guesses)]
        todo = sorted({i for i, k in enumerate(keys) if k not in self.memo})
        if todo:
            for i, f in zip(todo, super().flow(a[todo], b[todo], None if init is None else init[todo])):
                self.memo[keys[i]] = f
        return torch.stack([self.memo[k] for k in keys])


def _digest(x: torch.Tensor) -> bytes:
    return hashlib.blake2b(x.contiguous().numpy().tobytes(), digest_size=16).digest()


@dataclass(frozen=True)
class Case:
    suite: str  # "colour" | "known motion"
    clip: str
    edit: str


def score_clip(cases: list[tuple[Case, torch.Tensor]], source: torch.Tensor, engines: dict,
                variants: dict[str, list[tuple[str, str]]], keep: set) -> tuple[dict, dict]:
    """Every row for each (case, ground truth) of one source clip; returns (results by case, kept frames)."""
    from ...motion.propagate import flow_propagate

    results, kept = {}, {}
    motions = {}
    for name, engine in engines.items():
        engine.memo.clear()  # a new clip: its flow only
        motions[name] = engine.consecutive(source)
    for case, truth in cases:
        ref = truth[:1]
        rows = {}
        copy_ref = ref.expand_as(truth)
        rows[COPY] = _row(psnr(copy_ref, truth))
        rows[TRANSFER] = _row(psnr(colour_transfer(source, ref), truth))
        for est, engine in engines.items():
            for strategy, carry in variants[est]:
                name = flow_row_name(est, strategy, carry)
                res = flow_propagate(source, ref, [0], engine, motion=motions[est], strategy=strategy, carry=carry)
                carried = res.filled < 0.5
                r = _row(psnr(res.frames, truth))
                r["psnr_valid"] = _window_means(psnr(res.frames, truth, carried))
                r["copy_psnr_valid"] = _window_means(psnr(copy_ref, truth, carried))
                r["filled"] = _window_means(res.filled.float().flatten(1).mean(1))
                r["cuts"] = list(res.cuts)
                rows[name] = r
                if (case.clip, case.edit, name) in keep:  # strip panels only (results cross process borders)
                    k = source.shape[0] - 1
                    kept[(case.clip, case.edit)] = {t: (source[t], truth[0], res.frames[t], truth[t])
                                                    for t in sorted({max(1, k // 2), k})}
        results[case] = rows
    return results, kept
