"""`python -m magicprop bench real`: every clip of both suites through every flow row, in worker processes; writes
real.json (and the strip)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ...errors import MagicPropError
from ...io.fileio import atomic_path
from ...log import get_logger
from ...motion.engine import FlowSettings
from ...motion.raft import WEIGHTS_FILE
from ..methods import flow_row_name, flow_variants
from .acceptance import acceptance, choose_default
from .camera_path import KNOWN, PATH, PATH_FRAMES, known_clip, known_motion_clip, path_statistics
from .clips import CLIPS, load_clip, real_clip
from .edits import EDITS, SPATIAL_EDITS
from .report import STRIP, write_strip
from .score import WINDOW, Case, MemoFlowEngine, score_clip
from .speed import measure_speed, pair_seconds

log = get_logger(__name__)

SLOW = {"dualtvl1": "left out by default: at OpenCV's default parameters DualTVL1 costs seconds per pair on a CPU "
                    "(speed.seconds_per_pair), about 2 hours for this benchmark; pass estimators=[..., 'dualtvl1']"}
"""Estimators the default run leaves out, with the reason recorded in the results."""


def run_real(
    out: Path,
    flow_weights: Path | None = None,
    progress: bool = True,
    clips: Sequence[str] | None = None,
    edits: Sequence[str] | None = None,
    known: Sequence[str] | None = None,
    spatial_edits: Sequence[str] | None = None,
    frames: int | None = None,
    known_frames: int = PATH_FRAMES,
    estimators: Sequence[str] | None = None,
    strategies: Sequence[str] | None = None,
    carries: Sequence[str] | None = None,
    long_side: int = 320,
    speed: bool = True,
    strip: bool = True,
    workers: int | None = None,
) -> dict:
    """Run the benchmark; write `out`/real.json (and `out`/real.png with `strip`); return the results.

    Defaults are the full benchmark; the arguments cut it down (tests): `clips`/`edits` of the colour suite (names
    from CLIPS/EDITS; an empty list skips the suite), `known`/`spatial_edits` of the known-motion suite (KNOWN /
    SPATIAL_EDITS), `frames` after the reference at most, `estimators` (default: every one in ESTIMATORS; RAFT only
    with `flow_weights`), `strategies` (default: every one in STRATEGIES), `carries` (default: both for the default
    estimator, the default carry for the others: `flow_variants`). Clips run in `workers` processes (default:
    one per CPU core); the results do not depend on it.
    """
    from tqdm.auto import tqdm

    from ...motion.engine import ESTIMATORS
    from ...motion.propagate import CARRIES, DEFAULT_CARRY, DEFAULT_STRATEGY, STRATEGIES

    clips = [c.name for c in CLIPS] if clips is None else list(clips)
    edits = list(EDITS) if edits is None else list(edits)
    known = [k.name for k in KNOWN] if known is None else list(known)
    spatial_edits = list(SPATIAL_EDITS) if spatial_edits is None else list(spatial_edits)
    for name, given, allowed in (("clip", clips, [c.name for c in CLIPS]), ("edit", edits, list(EDITS)),
                                 ("known-motion clip", known, [k.name for k in KNOWN]),
                                 ("spatial edit", spatial_edits, list(SPATIAL_EDITS)),
                                 ("estimator", estimators or [], list(ESTIMATORS)),
                                 ("strategy", strategies or [], list(STRATEGIES)),
                                 ("carry", carries or [], list(CARRIES))):
        for g in given:
            if g not in allowed:
                raise MagicPropError(f"bench real {name} {g!r}: expected one of {allowed}.")
    if flow_weights is not None and not Path(flow_weights).is_file():
        raise MagicPropError(f"--flow-weights {str(flow_weights)!r}: no such file; pass a {WEIGHTS_FILE}, or leave "
                             "it out to skip the RAFT rows.")
    default_estimator = FlowSettings().estimator
    strategies = [DEFAULT_STRATEGY] + [s for s in STRATEGIES if s != DEFAULT_STRATEGY] if strategies is None \
        else list(strategies)
    skipped = {}
    if estimators is None:
        estimators = [e for e in ESTIMATORS if e not in SLOW]
        for e in SLOW:
            skipped[flow_row_name(e)] = SLOW[e]
    engines = {}
    for est in estimators:
        weights = str(flow_weights) if est == "raft" and flow_weights is not None else None
        if est == "raft" and weights is None:
            skipped[flow_row_name(est)] = \
                "no --flow-weights given: RAFT is unmeasured"
            continue
        try:
            engines[est] = MemoFlowEngine(FlowSettings(estimator=est, weights=weights))
        except MagicPropError as e:
            skipped[flow_row_name(est)] = str(e)
    default_row = flow_row_name(default_estimator)
    keep = set()
    for clip in [c for c in STRIP if c in clips + known][:4]:
        run = edits if clip in clips else spatial_edits
        if run:
            keep.add((clip, STRIP[clip] if STRIP[clip] in run else run[0], default_row))
    results: dict = {
        "config": {"long_side": long_side, "frames": frames, "known_frames": known_frames, "window": WINDOW,
                   "estimators": {e: eng.settings.record() for e, eng in engines.items()},
                   "strategies": strategies, "default_strategy": DEFAULT_STRATEGY, "default_carry": DEFAULT_CARRY,
                   "default_estimator": default_estimator, "default_row": default_row,
                   "clips": {c: asdict(real_clip(c)) for c in clips}, "edits": edits,
                   "known": {k: asdict(known_clip(k)) for k in known}, "spatial_edits": spatial_edits,
                   "path": asdict(PATH)},
        "skipped": skipped, "colour": {}, "known_motion": {},
    }
    n = min(known_frames, PATH_FRAMES) if frames is None else min(frames, known_frames, PATH_FRAMES)
    settings = {e: eng.settings for e, eng in engines.items()}
    variants = {e: [(s, c) for s, c in flow_variants(e, default_estimator)
                    if s in strategies and (c in carries if carries is not None else True)] for e in engines}
    jobs = [("colour", c, edits, long_side, frames, settings, variants, keep) for c in clips] + \
        [("known_motion", k, spatial_edits, long_side, n, settings, variants, keep) for k in known]
    workers = min(len(jobs), os.cpu_count() or 1) if workers is None else max(1, min(workers, len(jobs)))
    kept = {}
    with tqdm(total=len(jobs), desc="bench real", unit="clip", disable=not progress) as bar:
        if workers > 1 and jobs:
            # spawn, never fork: a child forked after torch or OpenCV started their thread pools can deadlock (it
            # did, in a test process); each clip is one job
            import concurrent.futures
            import multiprocessing

            pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            with pool:
                done = [pool.submit(_job, *j) for j in jobs]
                for f in concurrent.futures.as_completed(done):
                    f.result()
                    bar.update(1)
            outcomes = [f.result() for f in done]
        else:
            outcomes = []
            for j in jobs:
                outcomes.append(_job(*j))
                bar.update(1)
    for (key, clip, entry, k) in outcomes:
        results[key][clip] = entry
        kept.update(k)
    stats = path_statistics(PATH, (round(long_side * 9 / 16), long_side))
    results["path_statistics"] = stats
    if known and not stats["meets_bounds"]:
        log.warning("bench real: the known camera path misses its bounds: %s", stats)
    results["config"]["workers"] = workers
    if speed:
        results["speed"] = measure_speed(default_estimator, DEFAULT_STRATEGY)
        results["speed"]["seconds_per_pair"] = pair_seconds(
            [e for e in ESTIMATORS if e != "raft" or flow_weights is not None], long_side, flow_weights)
    results["choice"] = choose_default(results)
    results["acceptance"] = acceptance(results, default_row)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "real.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1, allow_nan=True))
    if strip and kept:
        write_strip(kept, out / "real.png")
    return results


def _job(key: str, clip: str, edits: list[str], long_side: int, frames: int | None, settings: dict,
         variants: dict[str, list[tuple[str, str]]], keep: set) -> tuple[str, str, dict, dict]:
    """One clip of one suite, every edit, estimator and strategy (a process-pool job: arguments pickle)."""

    engines = {e: MemoFlowEngine(s) for e, s in settings.items()}
    if key == "colour":
        source = load_clip(clip, long_side, frames)
        cases = [(Case("colour", clip, e), EDITS[e](source)) for e in edits]
    else:
        source, truths = known_motion_clip(known_clip(clip), edits, long_side, frames)
        cases = [(Case("known motion", clip, e), t) for e, t in truths.items()]
    scored, kept = score_clip(cases, source, engines, variants, keep)
    log.info("bench real: %s done", clip)
    return key, clip, {"frames": source.shape[0], "size": list(source.shape[1:3]),
                       "edits": {case.edit: rows for case, rows in scored.items()}}, kept
