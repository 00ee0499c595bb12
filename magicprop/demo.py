"""`python -m magicprop demo`: the embedded default. Propagates edited references through held-out clips of the
synthetic domain with the small models shipped in the package (all made by this project), scores them against
ground truth next to two baselines, and writes an mp4, a PNG strip and a metrics JSON.

`demo --train` first retrains every shipped model from scratch (VAE, PropDPMs) with the recipes in the manifest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .backend import StandaloneModels
from .errors import MagicPropError
from .evaluate import propagate_frames, psnr, ssim, strip
from .fileio import atomic_path
from .frames import save_image
from .synthetic import SceneConfig, make_clip
from .video import write_video

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent / "demo_models"
MANIFEST = "MANIFEST.json"
HELD_OUT_SEED = 3_000_000
"""Demo clips: seeds far from training (0 ..), validation (1e6 ..) and VAE (2e6 ..) clips."""
WINDOWS = ((1, 10), (11, 20), (21, 30))


@dataclass(frozen=True)
class Method:
    name: str
    checkpoint: str | None  # None: copy the edited reference to every frame


METHODS = (
    Method("copy reference", None),
    Method("no previous frame", "propdpm-no-prev.safetensors"),
    Method("PropDPM", "propdpm-main.safetensors"),
    Method("PropDPM + noise aug.", "propdpm-noise-aug.safetensors"),
)


def manifest(models: Path = MODELS_DIR) -> dict:
    path = models / MANIFEST
    if not path.is_file():
        raise MagicPropError(f"demo models {str(models)!r} have no {MANIFEST}: run `python -m magicprop demo --train`.")
    return json.loads(path.read_text())


def window_means(per_frame: torch.Tensor) -> dict[str, float]:
    """Mean over frames 1-10, 11-20, 21-30 (distance from the reference) of a (K,) per-frame metric."""
    return {f"{a}-{b}": float(per_frame[a : b + 1].mean()) for a, b in WINDOWS if b < per_frame.shape[0]}


def run_demo(out: Path, models: Path = MODELS_DIR, clips: int = 4, steps: int = 20, progress: bool = True) -> dict:
    """Evaluate every method on `clips` held-out clips; write outputs into `out`; return the metrics."""
    from tqdm.auto import tqdm

    info = manifest(models)
    scene = SceneConfig(**info["scene"])
    loaded = {m.name: StandaloneModels.load(models / m.checkpoint, models / "vae", models / "clip_vision")
              for m in METHODS if m.checkpoint}
    per_frame = {m.name: {"psnr": [], "ssim": []} for m in METHODS}
    first = {}
    total = clips * (len(METHODS) - 1) * (scene.frames - 1)
    with tqdm(total=total, desc="demo", unit="frame", disable=not progress) as bar:
        for c in range(clips):
            pair = make_clip(HELD_OUT_SEED + c, scene)
            truth, reference = pair.edit.frames, pair.edit.frames[:1]
            for m in METHODS:
                if m.checkpoint is None:
                    result = reference.expand_as(truth)
                else:
                    result = propagate_frames(loaded[m.name], reference, pair.source.depth, 0, steps=steps, seed=c,
                                              callback=lambda k, _l: bar.update(0 if k == 0 else 1))
                per_frame[m.name]["psnr"].append(psnr(result, truth))
                per_frame[m.name]["ssim"].append(ssim(result, truth))
                if c == 0:
                    first[m.name] = result
            if c == 0:
                first["source"], first["truth"] = pair.source.frames, truth
    metrics = {"clips": clips, "frames": scene.frames, "steps": steps, "reference_index": 0, "methods": {}}
    for name, scores in per_frame.items():
        p, s = torch.stack(scores["psnr"]).mean(0), torch.stack(scores["ssim"]).mean(0)
        metrics["methods"][name] = {"psnr_per_frame": p.tolist(), "ssim_per_frame": s.tolist(),
                                    "psnr_windows": window_means(p), "ssim_windows": window_means(s),
                                    "psnr_mean_1_29": float(p[1:].mean())}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    main = first["PropDPM"]
    edited_ref = first["truth"][:1].expand_as(main)
    picks = [0, 5, 10, 15, 20, 25, scene.frames - 1]
    save_image(out / "strip.png", strip([first["source"], edited_ref, main, first["truth"]], picks))
    side_by_side = torch.cat([first["source"], main, first["truth"]], dim=2)  # source | propagated | truth
    write_video(out / "demo.mp4", side_by_side, fps=10, crf=12)
    return metrics


def table(metrics: dict) -> str:
    """The metrics as a text table (PSNR dB / SSIM per window of frames after the reference)."""
    windows = [f"{a}-{b}" for a, b in WINDOWS if b < metrics["frames"]]
    lines = [f"{'method':<24}" + "".join(f"{'frames ' + w:>18}" for w in windows)]
    for name, m in metrics["methods"].items():
        cells = "".join(f"{m['psnr_windows'][w]:>10.2f} / {m['ssim_windows'][w]:.3f}" for w in windows)
        lines.append(f"{name:<24}{cells}")
    return "\n".join(lines)


DEMO_CLIP_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "image_size": 64, "patch_size": 16, "projection_dim": 64}
"""The demo's CLIP vision: a tiny ViT with seeded random weights (4x4 patches + class token, 64 wide)."""
DEMO_CLIP_SEED = 7
TRAIN_CONFIGS = Path(__file__).resolve().parent / "configs" / "train"
RECIPES = (("propdpm-main.safetensors", "demo_main.toml", None),
           ("propdpm-noise-aug.safetensors", "demo_noise_aug.toml", None),
           ("propdpm-no-prev.safetensors", "demo_no_prev.toml", None),
           ("propdpm-rollout.safetensors", "demo_rollout.toml", "propdpm-main.safetensors"),
           ("propdpm-drift.safetensors", "demo_drift.toml", "propdpm-noise-aug.safetensors"))
"""(shipped file, recipe in configs/train, checkpoint it is fine-tuned from): the three models of the demo, then
the two drift-control fine-tunes of the quality benchmark."""


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
    import time

    from .checkpoint import convert_checkpoint
    from .train.config import load_config
    from .train.loop import train

    t0 = time.perf_counter()
    cfg = load_config(TRAIN_CONFIGS / recipe, demo_overrides(models, work, filename, steps, clips, init))
    path = train(cfg, progress)
    convert_checkpoint(path, models / filename, torch.float16)  # shipped in half precision
    return time.perf_counter() - t0


def write_manifest(models: Path, vae_cfg, seconds: dict, budgets: dict | None = None) -> None:
    """MANIFEST.json: what each shipped model is and how to make it again."""
    from .train.config import load_config

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
    """Retrain every demo model from scratch into `models` (VAE, CLIP, three PropDPMs); `work` holds runs.

    steps / vae_steps / clips / vae_clips shrink the recipes' budgets (None: the recipe's own)."""
    import time

    from .train.vae import VAETrainConfig, train_vae

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
