"""Training configuration: TOML file -> dataclasses, each field with the reason it exists."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..errors import MagicPropError


@dataclass
class ModelConfig:
    unet: str | None = None
    """Local SD1.5 to initialise from (diffusers folder or single file); the paper's initialisation."""
    unet_config: dict[str, Any] | str | None = None
    """Or a diffusers UNet config (dict or JSON path) with seeded random weights (small models, tests)."""
    init_checkpoint: str | None = None
    """Or an existing PropDPM checkpoint to fine-tune."""
    vae: str = ""
    """Local diffusers AutoencoderKL folder (frozen)."""
    clip_vision: str = ""
    """Local transformers CLIPVisionModelWithProjection folder (frozen)."""
    clip_name: str | None = None
    """Public name of the CLIP vision model, recorded for users (default: described from its config)."""
    seed: int = 0
    """Seed of the random initialisation (new channels, adapter, random UNets)."""


@dataclass
class DataConfig:
    source: str = "shards"
    """"shards" (made by `python -m magicprop prepare`) or "synthetic" (rendered with ground truth)."""
    shards: str | None = None
    """Folder (or index.json) of prepared shards."""
    synthetic_clips: int = 2000
    """Number of distinct synthetic clips (seeds synthetic_seed .. + n-1)."""
    synthetic_seed: int = 0
    synthetic_size: int = 128
    synthetic_frames: int = 30
    gaps: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    """Previous->target distances drawn in training (inference always steps by 1)."""
    gap_weights: list[float] = field(default_factory=lambda: [0.55, 0.2, 0.15, 0.1])
    backward: float = 0.5
    """Probability that the previous frame comes after the target (backward propagation)."""
    cache_latents: bool = True
    """Encode each clip once with the frozen VAE and CLIP and keep the results in memory."""
    latent_cache: str | None = None
    """A file to encode the whole source into once (fp16 safetensors) and reuse in later runs."""
    depth_model: str = "unknown"
    """Recorded in the checkpoint: what made the training depth."""


@dataclass
class TrainConfig:
    output_dir: str = "runs/propdpm"
    steps: int = 1000
    batch_size: int = 16
    """Global batch (all processes together); each of N processes takes batch_size / N."""
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    lr_schedule: str = "constant_with_warmup"
    warmup_steps: int = 100
    grad_clip: float = 1.0
    mixed_precision: str = "no"
    """"no", "fp16" or "bf16" (accelerate's autocast; a grad scaler only for fp16)."""
    gradient_checkpointing: bool = False
    ema_decay: float | None = None
    """EMA of the weights (exported instead of the raw weights when set)."""
    appearance_dropout: float = 0.1
    """Probability of training with the null appearance (zeros): enables guidance at inference."""
    prev_noise_augmentation: float = 0.0
    """Std of noise mixed into the previous-frame latent (drift control; same level at inference)."""
    previous_frame: bool = True
    """False trains the no-previous-frame baseline (the previous-latent channels are always zero)."""
    rollout_probability: float = 0.0
    """Share of samples whose previous frame is the model's own rollout (scheduled sampling / self-forcing): the
    model learns to correct its own errors, the exposure bias that makes autoregressive chains drift."""
    rollout_length: int = 3
    """Frames the model generates (one at a time, from a true frame further away) to reach the previous frame."""
    rollout_steps: int = 4
    """DDIM steps of each rollout frame (no gradient flows through the rollout)."""
    seed: int = 0
    """Seeds every sample's triplet, timestep and noise (deterministic, resumable, rank-independent)."""
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    validate_every: int = 500
    log_every: int = 50
    validation_steps: int = 10
    """Sampling steps of the validation propagation."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls, data: dict[str, Any], where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise MagicPropError(f"config [{where}] has unknown keys {unknown}; known keys: {sorted(known)}.")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name) if name in known else None
        if is_dataclass(default) and isinstance(value, dict):
            value = _build(type(default), value, f"{where}.{name}" if where else name)
        kwargs[name] = value
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """A RunConfig from a TOML file plus `section.key=value` overrides (values parsed as JSON when they can be)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MagicPropError(f"--config {str(p)!r} does not exist; pass a TOML training config.")
        try:
            import tomllib
        except ModuleNotFoundError:  # Python < 3.11
            import tomli as tomllib
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise MagicPropError(f"--config {str(p)!r} is not valid TOML: {e}.") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2:
            raise MagicPropError(f"--set {item!r}: expected section.key=value, e.g. train.steps=2000.")
        data.setdefault(parts[0], {})[parts[1]] = _parse_value(value)
    return _build(RunConfig, data, "")
