"""The embedded default: `python -m magicprop demo` on the shipped models, and `demo --train` from scratch."""

from __future__ import annotations

import json

import pytest
import torch

from magicprop.cli import main
from magicprop.demo import MODELS_DIR, METHODS, RECIPES, manifest, run_demo, train_demo_models
from magicprop.video import probe


def test_shipped_models_are_small_and_complete():
    info = manifest()
    files = [p for p in MODELS_DIR.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert total < 20 * 2**20, f"shipped demo models take {total / 2**20:.1f} MB"
    for m in METHODS:
        if m.checkpoint:
            assert (MODELS_DIR / m.checkpoint).is_file() and m.checkpoint in info["propdpm"]
    assert (MODELS_DIR / "vae" / "config.json").is_file() and (MODELS_DIR / "clip_vision" / "config.json").is_file()


def test_demo_writes_video_strip_and_metrics(tmp_path, caplog):
    out = tmp_path / "demo"
    with caplog.at_level("INFO"):
        assert main(["demo", "--out", str(out), "--clips", "1", "--steps", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {m.name for m in METHODS}
    for m in metrics["methods"].values():
        assert len(m["psnr_per_frame"]) == 31 and set(m["psnr_windows"]) == {"1-10", "11-20", "21-30"}
    assert probe(out / "demo.mp4").frames == 31
    assert (out / "strip.png").stat().st_size > 1000
    assert str((out / "strip.png").resolve()) in caplog.text and "copy reference" in caplog.text


def test_demo_train_retrains_everything_from_scratch(tmp_path):
    models = tmp_path / "models"
    train_demo_models(models, tmp_path / "work", steps=2, vae_steps=2, clips=3, vae_clips=2, progress=False)
    info = manifest(models)
    assert set(info["propdpm"]) == {f for f, _, _ in RECIPES}
    metrics = run_demo(tmp_path / "out", models, clips=1, steps=1, progress=False)
    for m in metrics["methods"].values():
        assert all(torch.isfinite(torch.tensor(m["psnr_per_frame"][1:])))
