"""`python -m magicprop bench quality`: drift on long clips, against ground truth, every method side by side.

Held-out synthetic clips of 120 frames after the edited reference (and the same motions cut to 30; shapes bounce
off the frame's edges so that the last frames move as much as the first), each method of methods.QUALITY_METHODS
propagating the edited frame 0; PSNR and SSIM against the edited rendering per frame. "copy true previous frame" is
the teacher-forced model's own baseline (an oracle, not a method): a model that beats it uses the depth to move
content, one that matches it has only learnt to copy its previous frame. Only the shipped checkpoints are loaded
(no training here); a method whose checkpoint is missing is reported as skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MagicPropError
from ..io.fileio import atomic_path
from ..log import get_logger
from ..synthetic import SceneConfig, make_clip
from .methods import QUALITY_METHODS, UNMEASURED, run_method, runs_here
from .metrics import Scores, slope_per_100_frames, windows
from .models import MODELS_DIR, load_models, manifest
from .report import plot
from .report import table as _table
from .seeds import QUALITY_SEED

log = get_logger(__name__)

WINDOW = 30
"""Frames per window of the tables: 1-30, 31-60, ... after the reference."""


def run_quality(out: Path, models_dir: Path = MODELS_DIR, clips: int = 3, frames: int = 120, short: int = 30,
                steps: int = 10, progress: bool = True) -> dict:
    """Evaluate every method on `clips` clips of `frames` (and `short`) frames after the reference."""
    import importlib.util

    from tqdm.auto import tqdm

    if importlib.util.find_spec("matplotlib") is None:  # the plot comes last: refuse before the work
        raise MagicPropError("bench quality plots with matplotlib, which is not installed: pip install matplotlib "
                             "(or the package's [cli] extra).")
    info = manifest(models_dir)
    size = info["scene"]["size"]
    available = {m.checkpoint for m in QUALITY_METHODS if m.checkpoint and (models_dir / m.checkpoint).is_file()}
    models = load_models(models_dir, sorted(available))
    why_not = {m.name: runs_here(m) for m in QUALITY_METHODS}
    for name, why in why_not.items():
        if why:
            log.warning("bench quality: %s skipped: %s", name, why)
    methods = [m for m in QUALITY_METHODS
               if (m.checkpoint is None or m.checkpoint in available) and not why_not[m.name]]
    skipped = [m.name for m in QUALITY_METHODS if m not in methods]
    results: dict = {"frames": frames, "short": short, "clips": clips, "steps": steps, "size": size,
                     "skipped": skipped, "unmeasured": UNMEASURED, "long": {}, "short_run": {}}
    with tqdm(total=clips * len(methods) * 2, desc="bench quality", unit="run", disable=not progress) as bar:
        for length, key in ((frames, "long"), (short, "short_run")):
            scores = Scores(m.name for m in methods)
            for c in range(clips):
                pair = make_clip(QUALITY_SEED + c, SceneConfig(size=size, frames=length + 1, bounce=True))
                for m in methods:
                    scores.add(m.name, run_method(m, pair, models, steps, seed=c), pair.edit.frames)
                    bar.update(1)
            for m in methods:
                p, summary = scores.summary(m.name, windows(length, WINDOW))
                results[key][m.name] = {**summary, "psnr_slope_per_100_frames": slope_per_100_frames(p)}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "quality.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    plot(results["long"], f"Propagation against ground truth, {results['clips']} held-out synthetic clips",
         out / "quality.png")
    return results


def table(results: dict, key: str = "long") -> str:
    """PSNR (dB) per window and the drift slope (dB per 100 frames) of every method on the long or short run."""
    rows = results[key]
    spans = list(next(iter(rows.values()))["psnr_windows"])
    cells = {name: [*(f"{r['psnr_windows'][w]:.2f}" for w in spans), f"{r['psnr_slope_per_100_frames']:.2f}"]
             for name, r in rows.items()}
    return _table([*((w, 10) for w in spans), ("slope/100", 11)], cells, max(28, 2 + max(map(len, rows))))
