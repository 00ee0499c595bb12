"""`python -m magicprop bench quality`: drift on long clips, against ground truth, every method side by side.

Held-out synthetic clips of 120 frames after the edited reference (and the same motions cut to 30; shapes bounce
off the frame's edges so that the last frames move as much as the first), each method
propagating the edited frame 0; PSNR and SSIM against the edited rendering per frame. Methods: copying the
reference; flow-warp propagation without diffusion (exact flow, and a Horn & Schunck estimate from the source
frames: what EbSynth-style tools do); flow propagation (magicprop.motion: the engine's estimators, every strategy,
fill from the edit's colour mapping); the no-previous-frame model; PropDPM as in the paper, teacher-forced (each
frame from the TRUE previous edited frame) and autoregressive; each drift control alone; all together. "copy true
previous frame" is the teacher-forced model's own baseline (an oracle, not a method): a model that beats it uses the
depth to move content, one that matches it has only learnt to copy its previous frame. Only the
shipped checkpoints are loaded (no training here); a method whose checkpoint is missing is reported as skipped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .backend import DiffusersDenoiser, StandaloneModels
from .benchmarks.real import row_name
from .demo import HELD_OUT_SEED, MODELS_DIR, manifest
from .depth import depth_to_latent_grid
from .drift import AnchoredDenoiser
from .errors import MagicPropError
from .evaluate import propagate_frames, psnr, ssim
from .fileio import atomic_path
from .flow import horn_schunck, propagate_by_flow
from .motion.engine import FlowEngine, FlowSettings
from .motion.propagate import DEFAULT_STRATEGY, STRATEGIES, flow_propagate
from .propagate import FrameRequest, frame_seed
from .synthetic import SceneConfig, make_clip

log = logging.getLogger(__name__)

QUALITY_SEED = HELD_OUT_SEED + 500
"""Clips of this benchmark: held out from training, validation, the VAE and the demo's first clips."""
ANCHOR_STRENGTH = 0.5


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # copy | copy-previous | flow-exact | flow-estimated | model | teacher-forced
    checkpoint: str | None = None
    anchor: float = 0.0
    estimator: str | None = None
    strategy: str | None = None


FLOW_ESTIMATORS = ("dis", "farneback", "dualtvl1")
"""Estimators of the flow-propagation rows (RAFT needs a local weights file: measured by `bench real --flow-weights`).
DualTVL1 costs seconds per pair, so only its default-strategy row is run."""


def _flow_methods() -> tuple[Method, ...]:
    strategies = [DEFAULT_STRATEGY] + [s for s in STRATEGIES if s != DEFAULT_STRATEGY]
    return tuple(Method(row_name(e, s, DEFAULT_STRATEGY), "flow-propagation", estimator=e, strategy=s)
                 for e in FLOW_ESTIMATORS for s in strategies if e != "dualtvl1" or s == DEFAULT_STRATEGY)


METHODS = (
    Method("copy reference", "copy"),
    Method("flow warp (exact flow)", "flow-exact"),
    Method("flow warp (Horn-Schunck)", "flow-estimated"),
    *_flow_methods(),
    Method("no previous frame", "model", "propdpm-no-prev.safetensors"),
    Method("copy true previous frame", "copy-previous"),
    Method("paper, teacher-forced", "teacher-forced", "propdpm-main.safetensors"),
    Method("paper (autoregressive)", "model", "propdpm-main.safetensors"),
    Method("+ noise augmentation", "model", "propdpm-noise-aug.safetensors"),
    Method("+ own-rollout training", "model", "propdpm-rollout.safetensors"),
    Method("+ statistics anchoring", "model", "propdpm-main.safetensors", ANCHOR_STRENGTH),
    Method("all drift controls", "model", "propdpm-drift.safetensors", ANCHOR_STRENGTH),
)


def windows(frames: int) -> list[tuple[int, int]]:
    return [(a, min(a + 29, frames)) for a in range(1, frames + 1, 30)]


def _teacher_forced(models: StandaloneModels, pair, steps: int, seed: int) -> torch.Tensor:
    """Each frame generated in one step of the chain from the TRUE previous edited frame."""
    truth = pair.edit.frames
    reference = truth[:1]
    latents = models.encode(truth)
    grid = tuple(latents.shape[-2:])
    depth = depth_to_latent_grid(pair.source.depth[:, None].float(), grid)
    denoiser = DiffusersDenoiser(models.unet, models.config, models.appearance_tokens(reference, latents[:1]), steps)
    out = [latents[:1]]
    for k in range(1, truth.shape[0]):
        out.append(denoiser(FrameRequest(k, k - 1, latents[k - 1 : k], depth[k : k + 1], depth[k - 1 : k],
                                         frame_seed(seed, k))))
    return models.decode(torch.cat(out))


def run_method(method: Method, pair, models: dict, steps: int, seed: int) -> torch.Tensor:
    truth = pair.edit.frames
    reference = truth[:1]
    if method.kind == "copy":
        return reference.expand_as(truth)
    if method.kind == "copy-previous":  # oracle: frame k-1 of the ground truth as frame k
        return torch.cat([reference, truth[:-1]])
    if method.kind == "flow-exact":
        return propagate_by_flow(reference[0], [f.permute(2, 0, 1) for f in pair.source.flow_back])
    if method.kind == "flow-estimated":
        return propagate_by_flow(reference[0], list(horn_schunck(pair.source.frames[:-1], pair.source.frames[1:])))
    if method.kind == "flow-propagation":
        engine = FlowEngine(FlowSettings(estimator=method.estimator))
        return flow_propagate(pair.source.frames, reference, [0], engine, strategy=method.strategy).frames
    m = models[method.checkpoint]
    if method.kind == "teacher-forced":
        return _teacher_forced(m, pair, steps, seed)
    if method.anchor:
        return _anchored(m, reference, pair.source.depth, steps, seed, method.anchor)
    return propagate_frames(m, reference, pair.source.depth, 0, steps=steps, seed=seed)


def _anchored(models: StandaloneModels, reference, depth, steps: int, seed: int, strength: float) -> torch.Tensor:
    from .propagate import propagate

    ref_latent = models.encode(reference)
    depth_lat = depth_to_latent_grid(depth[:, None].float(), tuple(ref_latent.shape[-2:]))
    inner = DiffusersDenoiser(models.unet, models.config, models.appearance_tokens(reference, ref_latent), steps)
    latents = propagate(AnchoredDenoiser(inner, ref_latent, strength), ref_latent, depth_lat, 0, seed)
    return models.decode(latents)


def _estimator_ok(method: Method) -> bool:
    """False when the method's flow estimator cannot run here (no cv2, or DualTVL1 without cv2.optflow)."""
    if method.estimator is None:
        return True
    try:
        FlowEngine(FlowSettings(estimator=method.estimator))
    except MagicPropError as err:
        log.warning("bench quality: %s skipped: %s", method.name, err)
        return False
    return True


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
    available = {m.checkpoint for m in METHODS if m.checkpoint and (models_dir / m.checkpoint).is_file()}
    models = {c: StandaloneModels.load(models_dir / c, models_dir / "vae", models_dir / "clip_vision")
              for c in sorted(available)}
    methods = [m for m in METHODS if (m.checkpoint is None or m.checkpoint in available) and _estimator_ok(m)]
    skipped = [m.name for m in METHODS if m not in methods]
    results: dict = {"frames": frames, "short": short, "clips": clips, "steps": steps, "size": size,
                     "unmeasured": {row_name("raft", DEFAULT_STRATEGY, DEFAULT_STRATEGY): "needs a local RAFT weights "
                                    "file: measured by `bench real --flow-weights`"},
                     "skipped": skipped, "long": {}, "short_run": {}}
    with tqdm(total=clips * len(methods) * 2, desc="bench quality", unit="run", disable=not progress) as bar:
        for length, key in ((frames, "long"), (short, "short_run")):
            scores = {m.name: {"psnr": [], "ssim": []} for m in methods}
            for c in range(clips):
                pair = make_clip(QUALITY_SEED + c, SceneConfig(size=size, frames=length + 1, bounce=True))
                for m in methods:
                    result = run_method(m, pair, models, steps, seed=c)
                    scores[m.name]["psnr"].append(psnr(result, pair.edit.frames))
                    scores[m.name]["ssim"].append(ssim(result, pair.edit.frames))
                    bar.update(1)
            for name, s in scores.items():
                p, q = torch.stack(s["psnr"]).mean(0), torch.stack(s["ssim"]).mean(0)
                idx = torch.arange(1, length + 1, dtype=torch.float32)
                slope = float(torch.linalg.lstsq(torch.stack([idx, torch.ones_like(idx)], 1), p[1:, None]).solution[0])
                results[key][name] = {
                    "psnr_per_frame": p.tolist(), "ssim_per_frame": q.tolist(),
                    "psnr_windows": {f"{a}-{b}": float(p[a : b + 1].mean()) for a, b in windows(length)},
                    "ssim_windows": {f"{a}-{b}": float(q[a : b + 1].mean()) for a, b in windows(length)},
                    "psnr_slope_per_100_frames": 100 * slope,
                }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "quality.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    plot(results, out / "quality.png")
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    for name, r in results["long"].items():
        for ax, metric in zip(axes, ("psnr_per_frame", "ssim_per_frame")):
            ax.plot(range(1, len(r[metric])), r[metric][1:], label=name, linewidth=1.2)
    for ax, label in zip(axes, ("PSNR (dB)", "SSIM")):
        ax.set_xlabel("frames after the edited reference")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Propagation against ground truth, {results['clips']} held-out synthetic clips")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def table(results: dict, key: str = "long") -> str:
    rows = results[key]
    wins = list(next(iter(rows.values()))["psnr_windows"])
    head = f"{'method':<42}" + "".join(f"{w:>10}" for w in wins) + f"{'slope/100':>11}"
    lines = [head]
    for name, r in rows.items():
        lines.append(f"{name:<42}" + "".join(f"{r['psnr_windows'][w]:>10.2f}" for w in wins)
                     + f"{r['psnr_slope_per_100_frames']:>11.2f}")
    return "\n".join(lines)
