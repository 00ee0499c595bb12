"""`python -m magicprop demo`: the embedded default. Propagates edited references through held-out clips of the
synthetic domain with the small models shipped in the package (all made by this project), scores them against
ground truth next to two baselines, and writes an mp4, a PNG strip and a metrics JSON.

`demo --train` first retrains every shipped model from scratch (VAE, PropDPMs) with the recipes in the manifest
(models.train_demo_models).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..fileio import atomic_path
from ..frames import save_image
from ..synthetic import SceneConfig, make_clip
from ..video import write_video
from .methods import DEMO_METHODS, DEMO_PAPER, run_method
from .metrics import Scores, windows
from .models import MODELS_DIR, load_models, manifest
from .report import strip
from .report import table as _table
from .seeds import DEMO_SEED

WINDOW = 10
"""Frames per window of the tables: 1-10, 11-20, 21-30 after the reference."""
STRIP_FRAMES = (0, 5, 10, 15, 20, 25)
"""Frames in strip.png (and the clip's last frame)."""


def run_demo(out: Path, models: Path = MODELS_DIR, clips: int = 4, steps: int = 20, progress: bool = True) -> dict:
    """Evaluate every method on `clips` held-out clips; write outputs into `out`; return the metrics."""
    from tqdm.auto import tqdm

    info = manifest(models)
    scene = SceneConfig(**info["scene"])
    loaded = load_models(models, dict.fromkeys(m.checkpoint for m in DEMO_METHODS if m.checkpoint))
    scores = Scores(m.name for m in DEMO_METHODS)
    first = {}
    total = clips * (len(DEMO_METHODS) - 1) * (scene.frames - 1)
    with tqdm(total=total, desc="demo", unit="frame", disable=not progress) as bar:
        for c in range(clips):
            pair = make_clip(DEMO_SEED + c, scene)
            truth = pair.edit.frames
            for m in DEMO_METHODS:
                result = run_method(m, pair, loaded, steps, c, lambda k, _l: bar.update(0 if k == 0 else 1))
                scores.add(m.name, result, truth)
                if c == 0:
                    first[m.name] = result
            if c == 0:
                first["source"], first["truth"] = pair.source.frames, truth
    metrics = {"clips": clips, "frames": scene.frames, "steps": steps, "reference_index": 0, "methods": {}}
    for m in DEMO_METHODS:
        p, summary = scores.summary(m.name, windows(scene.frames - 1, WINDOW))
        metrics["methods"][m.name] = {**summary, "psnr_mean_1_29": float(p[1:].mean())}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    main = first[DEMO_PAPER.name]
    edited_ref = first["truth"][:1].expand_as(main)
    save_image(out / "strip.png", strip([first["source"], edited_ref, main, first["truth"]],
                                        [*STRIP_FRAMES, scene.frames - 1]))
    side_by_side = torch.cat([first["source"], main, first["truth"]], dim=2)  # source | propagated | truth
    write_video(out / "demo.mp4", side_by_side, fps=10, crf=12)
    return metrics


def table(metrics: dict) -> str:
    """The metrics as a text table (PSNR dB / SSIM per window of frames after the reference)."""
    rows = metrics["methods"]
    spans = list(next(iter(rows.values()))["psnr_windows"])
    cells = {name: [f"{m['psnr_windows'][w]:>10.2f} / {m['ssim_windows'][w]:.3f}" for w in spans]
             for name, m in rows.items()}
    return _table([(f"frames {w}", 18) for w in spans], cells, 24)
