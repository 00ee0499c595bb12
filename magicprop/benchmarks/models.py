"""The registry of the small models shipped in `magicprop/demo_models` (all made by this project): their files,
MANIFEST.json, the recipes that make them, and `demo --train`, which retrains every one of them from scratch."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import MagicPropError
from ..io.fileio import atomic_path
from ..propdpm.diffusers_backend import StandaloneModels

MODELS_DIR = Path(__file__).resolve().parent.parent / "demo_models"
MANIFEST = "MANIFEST.json"
TRAIN_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "train"

MAIN = "propdpm-main.safetensors"
NOISE_AUG = "propdpm-noise-aug.safetensors"
NO_PREV = "propdpm-no-prev.safetensors"
ROLLOUT = "propdpm-rollout.safetensors"
DRIFT = "propdpm-drift.safetensors"
RECIPES = ((MAIN, "demo_main.toml", None),
           (NOISE_AUG, "demo_noise_aug.toml", None),
           (NO_PREV, "demo_no_prev.toml", None),
           (ROLLOUT, "demo_rollout.toml", MAIN),
           (DRIFT, "demo_drift.toml", NOISE_AUG))
"""(shipped file, recipe in configs/train, checkpoint it is fine-tuned from): the three models of the demo, then
the two drift-control fine-tunes of the quality benchmark."""

DEMO_CLIP_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "image_size": 64, "patch_size": 16, "projection_dim": 64}
"""The demo's CLIP vision: a tiny ViT with seeded random weights (4x4 patches + class token, 64 wide)."""
DEMO_CLIP_SEED = 7


def manifest(models: Path = MODELS_DIR) -> dict:
    """The models folder's MANIFEST.json: what each model is and how to make it again."""
    path = models / MANIFEST
    if not path.is_file():
        raise MagicPropError(f"demo models {str(models)!r} have no {MANIFEST}: run `python -m magicprop demo --train`.")
    return json.loads(path.read_text())


def load_models(models: Path, checkpoints: Iterable[str]) -> dict[str, StandaloneModels]:
    """{checkpoint file: the PropDPM with the folder's VAE and CLIP vision} for each of `checkpoints`."""
    return {c: StandaloneModels.load(models / c, models / "vae", models / "clip_vision") for c in checkpoints}


def build_demo_clip(folder: Path) -> Path:
    """The demo's CLIP vision model, built from its stored config and seed (no training), saved to `folder`."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_CLIP_SEED)
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**DEMO_CLIP_CONFIG)).eval()
    model.half().save_pretrained(folder)
    return folder


def demo_overrides(models: Path, work: Path, filename: str, steps: int | None = None,
                   clips: int | None = None, init: str | None = None) -> list[str]:
    """--set overrides that point a demo recipe at the demo's VAE/CLIP folders and a work folder."""
    overrides = [f"model.init_checkpoint={json.dumps(str(models / init))}"] if init else []
    overrides += [f"model.vae={json.dumps(str(models / 'vae'))}",
                  f"model.clip_vision={json.dumps(str(models / 'clip_vision'))}",
                  f"data.latent_cache={json.dumps(str(work / 'cache' / f'synthetic-{clips or 2000}.safetensors'))}",
                  f"train.output_dir={json.dumps(str(work / 'runs' / filename.split('.')[0]))}"]
    if steps:
        overrides += [f"train.steps={steps}", f"train.warmup_steps={min(steps, 500)}",
                      f"train.checkpoint_every={steps}", f"train.validate_every={steps}"]
    if clips:
        overrides.append(f"data.synthetic_clips={clips}")
    return overrides


def train_demo_propdpm(models: Path, work: Path, filename: str, recipe: str, init: str | None = None,
                       steps: int | None = None, clips: int | None = None, progress: bool = True) -> float:
    """Train one demo PropDPM from its recipe and copy it into `models`; returns the seconds it took."""
    from ..propdpm.checkpoint import convert_checkpoint
    from ..train.config import load_config
    from ..train.loop import train

    t0 = time.perf_counter()
    cfg = load_config(TRAIN_CONFIGS / recipe, demo_overrides(models, work, filename, steps, clips, init))
    path = train(cfg, progress)
    convert_checkpoint(path, models / filename, torch.float16)  # shipped in half precision
    return time.perf_counter() - t0


def write_manifest(models: Path, vae_cfg, seconds: dict, budgets: dict | None = None) -> None:
    """MANIFEST.json: what each shipped model is and how to make it again."""
    from ..train.config import load_config

    def steps_trained(recipe: str) -> int:  # the budget's override, else the recipe's own
        return (budgets or {}).get("steps") or load_config(TRAIN_CONFIGS / recipe).train.steps

    recipes = {f: {"config": f"magicprop/configs/train/{r}", "fine_tuned_from": i, **(budgets or {}),
                   "steps_trained": steps_trained(r)} for f, r, i in RECIPES}
    info = {"scene": {"size": 128, "frames": 31}, "vae": {"config": {**vae_cfg.__dict__, "output": "vae"}},
            "clip_vision": {"config": DEMO_CLIP_CONFIG, "seed": DEMO_CLIP_SEED},
            "propdpm": recipes, "train_seconds": seconds}
    with atomic_path(models / MANIFEST) as tmp:
        tmp.write_text(json.dumps(info, indent=1))


def train_demo_models(models: Path, work: Path, steps: int | None = None, vae_steps: int | None = None,
                      clips: int | None = None, vae_clips: int | None = None, progress: bool = True) -> None:
    """Retrain every demo model from scratch into `models` (VAE, CLIP, the PropDPMs of RECIPES); `work` holds runs.

    steps / vae_steps / clips / vae_clips shrink the recipes' budgets (None: the recipe's own)."""
    from ..train.vae import VAETrainConfig, train_vae

    models.mkdir(parents=True, exist_ok=True)
    shrink = {k: v for k, v in (("steps", vae_steps), ("clips", vae_clips)) if v}
    vae_cfg = VAETrainConfig(output=str(models / "vae"), **shrink)
    t0 = time.perf_counter()
    train_vae(vae_cfg, progress)
    seconds = {"vae": time.perf_counter() - t0}
    build_demo_clip(models / "clip_vision")
    for filename, recipe, init in RECIPES:
        seconds[filename] = train_demo_propdpm(models, work, filename, recipe, init, steps, clips, progress)
    budgets = {k: v for k, v in (("steps", steps), ("synthetic_clips", clips)) if v}
    write_manifest(models, vae_cfg, seconds, budgets)
