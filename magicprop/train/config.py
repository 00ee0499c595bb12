"""Training configuration: TOML file + `--set` overrides -> typed dataclasses, each field with the reason it exists.

Every value is checked against its field's type as it is read: a wrong type or an unknown key is one MagicPropError
line naming the key, the value, the expected type and the fix (the CLI exits with code 2 before any work). Ints are
accepted for float fields. What the checkpoint records (gap distribution, appearance dropout, previous-frame noise,
the previous-frame switch, the depth model) takes its defaults from the checkpoint format (`magicprop.propdpm.config`).
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..errors import MagicPropError
from ..io.fileio import not_a_file
from ..motion.propagate import DEFAULT_STRATEGY
from ..propdpm.config import DepthSpec, GapDistribution, PropDPMConfig
from ..propdpm.motion_inputs import TRAIN_CARRY


@dataclass
class ModelConfig:
    unet: str | None = None
    """Local SD1.5 to initialise from (diffusers folder or single file); the paper's initialisation."""
    unet_config: dict[str, Any] | str | None = None
    """Or a diffusers UNet config (dict or JSON path) with seeded random weights (small models, tests)."""
    init_checkpoint: str | None = None
    """Or an existing PropDPM checkpoint to fine-tune. With train.flow_guided, a paper-layout PropDPM is extended to
    the flow-guided inputs with the new channels at zero, so training starts from exactly the trained model."""
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
    gaps: list[int] = field(default_factory=lambda: list(GapDistribution.gaps))
    """Previous->target distances drawn in training (inference always steps by 1); recorded in the checkpoint."""
    gap_weights: list[float] = field(default_factory=lambda: list(GapDistribution.weights))
    backward: float = GapDistribution.backward
    """Probability that the previous frame comes after the target (backward propagation)."""
    cache_latents: bool = True
    """Encode each clip once with the frozen VAE and CLIP and keep the results in memory."""
    latent_cache: str | None = None
    """A file to encode the whole source into once (fp16 safetensors) and reuse in later runs with the same clips and
    encoders (recorded in the file; another source or encoder encodes it again)."""
    depth_model: str = DepthSpec.model
    """Recorded in the checkpoint: what made the training depth, for shards whose index does not record it."""
    motion_cache: str | None = None
    """train.flow_guided: a file to compute every clip's motion inputs into once (fp16 safetensors, with the
    estimator's record and the data's identity) and reuse in later runs; without it they are computed as clips are
    drawn, kept in memory."""


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
    appearance_dropout: float = PropDPMConfig.appearance_dropout
    """Probability of training with the null appearance (zeros): enables guidance at inference."""
    prev_noise_augmentation: float = PropDPMConfig.prev_noise_augmentation
    """Std of noise mixed into the previous-frame latent (drift control; same level at inference)."""
    previous_frame: bool = PropDPMConfig.previous_frame
    """False trains the no-previous-frame baseline (the previous-latent channels are always zero)."""
    rollout_probability: float = 0.0
    """Share of samples whose previous frame is the model's own rollout (scheduled sampling / self-forcing): the
    model learns to correct its own errors, the exposure bias that makes autoregressive chains drift."""
    rollout_length: int = 3
    """Frames the model generates (one at a time, from a true frame further away) to reach the previous frame."""
    rollout_steps: int = 4
    """DDIM steps of each rollout frame (no gradient flows through the rollout)."""
    flow_guided: bool = False
    """Train the flow-guided layout (magicprop.propdpm.conditioning.FLOW_GUIDED_INPUTS): the reference carried to the
    target by flow propagation on the source frames, its validity and the motion noise level as extra input channels;
    references at the clip's first, middle and last frames (far from most targets)."""
    motion_noise_augmentation: float = 0.0
    """flow_guided: largest std of the noise mixed into the carried latent; each sample draws its level uniformly
    below it and the model is told the level (its motion_noise_level input). Recorded in the checkpoint."""
    flow_carry: str = TRAIN_CARRY
    """flow_guided: what flow propagation carries in training ("edit": the reference's own pixels; the residual carry
    of an unedited reference is the target itself)."""
    flow_estimator: str = "dis"
    """flow_guided: the flow estimator (magicprop.motion.engine.ESTIMATORS) the users of the checkpoint will run;
    recorded in the checkpoint, and inference refuses flow from any other."""
    flow_preset: str = "medium"
    """flow_guided: the DIS preset (ultrafast, fast, medium)."""
    flow_work_size: int = 512
    """flow_guided: long side of the resolution flow is estimated at."""
    flow_weights: str | None = None
    """flow_guided: RAFT weights file, for flow_estimator "raft"."""
    flow_strategy: str = DEFAULT_STRATEGY
    """flow_guided: the flow propagation strategy (magicprop.motion.propagate.STRATEGIES); recorded, inference uses
    it."""
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


TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table",
              list: "an array", type(None): "null (unset)"}


def _describe(tp) -> str:
    """A field type in words: "an integer", "a string or null (unset)", "an array of integers" ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"an array of {_describe(args[0]).split(' ', 1)[1]}s" if args else "an array"
    if origin is dict:
        return "a table"
    return TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _check(value: Any, tp) -> tuple[bool, Any]:
    """(fits, value as stored): `value` checked against the field type `tp`; ints widen to floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            ok, v = _check(value, a)
            if ok:
                return True, v
        return False, value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        checked = [_check(v, args[0]) if args else (True, v) for v in value]
        return all(ok for ok, _ in checked), [v for _, v in checked]
    if origin is dict:
        return isinstance(value, dict), value
    if tp is type(None):
        return value is None, value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return isinstance(value, tp), value


def _show(value: Any) -> str:
    """A value as it would be written in TOML/--set (JSON), e.g. 16.0, "16", [1, 2]."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _suggest(value: Any, tp, default: Any) -> Any:
    """The nearest value of the right type (16.0 -> 16 for an integer, "0.5" -> 0.5 for a number), else the default."""
    candidates = []
    if isinstance(value, float) and value.is_integer():
        candidates.append(int(value))
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        candidates.append(bool(value))
    if isinstance(value, str):
        candidates += [_parse_value(value), value.lower() == "true" if value.lower() in ("true", "false") else None]
    elif not isinstance(value, (dict, list)) and value is not None:
        candidates.append(str(value))
    for c in candidates:
        if c is not None and _check(c, tp)[0]:
            return c
    return default


def _unknown(key: str, known: list[str], where: str) -> MagicPropError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f"did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}? " if close else ""
    return MagicPropError(f"config key {key} is unknown: {hint}known keys in {where}: {', '.join(known)}.")


def _build(cls, data: Any, where: str):
    """cls(**data) with every value type-checked; `where` is the section's dotted name ("" for the root)."""
    if not isinstance(data, dict):
        raise MagicPropError(f"config [{where}] = {_show(data)}: expected a table of keys ({where}.key = value).")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        if name not in known:
            raise _unknown(key, sorted(known), f"[{where}]" if where else "the config (sections)")
        tp = hints[name]
        if is_dataclass(tp):
            kwargs[name] = _build(tp, value, key)
            continue
        ok, stored = _check(value, tp)
        if not ok:
            f = known[name]
            default = f.default if f.default is not MISSING else f.default_factory()
            raise MagicPropError(
                f"config {key} = {_show(value)} ({type(value).__name__}): expected {_describe(tp)}; write e.g. "
                f"{key}={_show(_suggest(value, tp, default))} (in the TOML file or with --set)."
            )
        kwargs[name] = stored
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    """--set values are JSON when they parse as JSON (numbers, true/false, null, arrays, objects), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """A typed RunConfig from a TOML file plus `section.key=value` overrides; MagicPropError on any bad key, type or
    value (``check_values``)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MagicPropError(f"--config {str(p)!r} {not_a_file(p)}; pass a TOML training config.")
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
        if not sep or len(parts) != 2 or not all(parts):
            raise MagicPropError(f"--set {item!r}: expected section.key=value, e.g. --set train.steps=2000.")
        section = data.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise MagicPropError(f"--set {item!r}: {parts[0]} is not a section of the config.")
        section[parts[1]] = _parse_value(value)
    cfg = _build(RunConfig, data, "")
    check_values(cfg)
    return cfg


# -- values and inputs, checked before any work ---------------------------------------------------------------------

MIXED_PRECISION = ("no", "fp16", "bf16")


def lr_schedules() -> list[str]:
    """train.lr_schedule's options: diffusers' schedulers, less piecewise_constant (it needs step rules a run config
    cannot give)."""
    from diffusers.optimization import SchedulerType

    return [s.value for s in SchedulerType if s.value != "piecewise_constant"]


def _at_least(key: str, value: int, low: int, fix: str) -> None:
    if value < low:
        raise MagicPropError(f"config {key} = {value}: expected an integer >= {low}; {fix}.")


def _probability(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise MagicPropError(f"config {key} = {value}: expected a probability in [0, 1]; write e.g. {key}=0.5.")


def check_values(cfg: RunConfig) -> None:
    """The values of a run, each against what it means (types are checked as they are read): one MagicPropError
    line naming the key, the value, what is allowed and the fix. Pure: no file is read (load_config runs it)."""
    t, d = cfg.train, cfg.data
    _at_least("train.steps", t.steps, 0, "write the number of optimizer steps, e.g. train.steps=1000")
    _at_least("train.batch_size", t.batch_size, 1, "write e.g. train.batch_size=16")
    _at_least("train.warmup_steps", t.warmup_steps, 0, "write 0 for no warmup")
    _at_least("train.log_every", t.log_every, 1, "write e.g. train.log_every=50 (steps between log lines)")
    _at_least("train.checkpoint_every", t.checkpoint_every, 1,
              "write e.g. train.checkpoint_every=500 (steps between resumable checkpoints)")
    _at_least("train.validate_every", t.validate_every, 0, "write 0 to turn validation off")
    _at_least("train.validation_steps", t.validation_steps, 1,
              "write e.g. train.validation_steps=10 (sampling steps of the validation propagation)")
    _at_least("train.keep_checkpoints", t.keep_checkpoints, 0, "write 0 to keep every checkpoint")
    _at_least("train.rollout_length", t.rollout_length, 1, "write e.g. train.rollout_length=3")
    _at_least("train.rollout_steps", t.rollout_steps, 1, "write e.g. train.rollout_steps=4")
    if not t.learning_rate > 0:
        raise MagicPropError(f"config train.learning_rate = {t.learning_rate}: expected a number > 0; write e.g. "
                             "train.learning_rate=0.0001.")
    schedules = lr_schedules()
    if t.lr_schedule not in schedules:
        close = difflib.get_close_matches(t.lr_schedule, schedules, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise MagicPropError(f"config train.lr_schedule = {t.lr_schedule!r} is unknown: {hint}expected one of "
                             f"{', '.join(schedules)}.")
    if t.mixed_precision not in MIXED_PRECISION:
        raise MagicPropError(f"config train.mixed_precision = {t.mixed_precision!r}: expected one of "
                             f"{', '.join(MIXED_PRECISION)}.")
    if t.ema_decay is not None and not 0.0 < t.ema_decay < 1.0:
        raise MagicPropError(f"config train.ema_decay = {t.ema_decay}: expected a decay in (0, 1), e.g. 0.9999, or "
                             "null for no EMA.")
    for key in ("appearance_dropout", "rollout_probability"):
        _probability(f"train.{key}", getattr(t, key))
    _probability("data.backward", d.backward)
    if t.prev_noise_augmentation < 0:
        raise MagicPropError(f"config train.prev_noise_augmentation = {t.prev_noise_augmentation}: expected a noise "
                             "std >= 0; write 0 for none.")
    if not d.gaps or len(d.gaps) != len(d.gap_weights):
        raise MagicPropError(f"config data.gaps = {_show(d.gaps)} and data.gap_weights = {_show(d.gap_weights)}: "
                             "expected one weight per gap; write as many data.gap_weights as data.gaps (not empty).")
    if min(d.gaps) < 1:
        raise MagicPropError(f"config data.gaps = {_show(d.gaps)}: expected frame distances >= 1.")
    if min(d.gap_weights) < 0 or sum(d.gap_weights) <= 0:
        raise MagicPropError(f"config data.gap_weights = {_show(d.gap_weights)}: expected weights >= 0 with a "
                             "positive sum (a gap's weight is its share of the samples).")


def check_inputs(cfg: RunConfig) -> None:
    """The files a run reads, before any of them is loaded: the VAE and CLIP vision folders hold those models, the
    unet_config file is a JSON table."""
    from ..propdpm.clip import clip_vision_folder
    from ..propdpm.diffusers_backend import vae_folder

    m = cfg.model
    vae_folder(m.vae, "model.vae")
    clip_vision_folder(m.clip_vision, "model.clip_vision")
    if isinstance(m.unet_config, str) and not m.init_checkpoint:
        p = Path(m.unet_config)
        try:
            table = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MagicPropError(f"config model.unet_config = {m.unet_config!r} is not a readable JSON file "
                                 f"({type(e).__name__}): point it at a diffusers UNet config.json, or write the "
                                 "table itself ([model.unet_config]).") from None
        if not isinstance(table, dict):
            raise MagicPropError(f"config model.unet_config = {m.unet_config!r} holds {type(table).__name__}: expected "
                                 "a JSON table (a diffusers UNet config.json).")


RESUMABLE = frozenset({
    "train.steps", "train.output_dir", "train.checkpoint_every", "train.keep_checkpoints", "train.validate_every",
    "train.log_every", "train.validation_steps", "train.gradient_checkpointing", "data.cache_latents",
    "data.latent_cache", "data.motion_cache",
})
"""Keys a resumed run may change; any other change refuses to resume (`check_resume`).

Allowed: train.steps (train longer or stop earlier; with a decaying lr_schedule the remaining steps follow the new
length), the cadence of logs, checkpoints and validation, how many checkpoints are kept, the output folder itself,
gradient checkpointing (memory, not numbers) and the caches (where encoded clips are kept; a disk cache is tied to its
data by its own identity check). Refused: everything the restored state or the sample stream depends on: the model
(shapes, initialisation), the optimizer and schedule (the restored optimizer would silently keep its old values), the
EMA (its state is restored), the data and its sampling, the recorded training settings, precision and the seed."""


def _flat(d: dict) -> dict[str, Any]:
    """{"train.steps": 6, ...}: the sections' keys (tables inside a section, e.g. unet_config, compare whole)."""
    return {f"{section}.{k}": v for section, table in d.items() if isinstance(table, dict)
            for k, v in table.items()}


def check_resume(saved: dict, cfg: RunConfig, where: str) -> None:
    """Refuse to resume the run saved as `saved` (its config.json) with `cfg` if a key outside RESUMABLE changed.
    Keys one of them lacks (a MagicProp version apart) are not compared."""
    old, new = _flat(saved), _flat(json.loads(json.dumps(cfg.to_dict())))
    changed = [k for k in new if k in old and k not in RESUMABLE and old[k] != new[k]]
    if changed:
        diffs = "; ".join(f"{k} = {_show(new[k])}, was {_show(old[k])}" for k in changed)
        raise MagicPropError(
            f"train.output_dir {where!r} holds a run made with another config ({diffs}): resuming would mix the two; "
            f"use a new train.output_dir, or set {', '.join(changed)} back to resume "
            f"(a resumed run may change only {', '.join(sorted(RESUMABLE))})."
        )
