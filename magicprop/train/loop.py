"""The PropDPM training loop (MagicProp section 3.3.3) on accelerate: one device, DDP, or FSDP/DeepSpeed through
accelerate's own configuration.

Per sample: a (reference, previous, target) triplet of one clip; the target latent is noised on the
zero-terminal-SNR schedule and the UNet, given the previous latent and both depths (concatenated) and the
reference's appearance tokens (cross-attention), predicts v; the loss is the MSE on v. The appearance tokens are
replaced by zeros with probability `appearance_dropout` (guidance); the condition channels follow
``magicprop.propdpm.conditioning.condition_for``, the recipe inference uses (noise augmentation included).

With `train.flow_guided` the UNet also reads the motion inputs (``magicprop.propdpm.motion_inputs``): the sample's
reference (an anchor of the clip, ``train.motion``) carried to the target by flow propagation on the source frames with
the run's estimator, its validity and the carried latent's noise level; the checkpoint records the estimator.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import MagicPropError
from ..io.fileio import atomic_path
from ..log import get_logger
from ..propdpm.adapter import AppearanceAdapter
from ..propdpm.checkpoint import load_checkpoint, save_checkpoint
from ..propdpm.conditioning import FLOW_GUIDED_INPUTS, PAPER_INPUTS, ConditionRecipe, condition_for
from ..propdpm.config import DepthSpec, GapDistribution, PropDPMConfig
from ..propdpm.init_model import initial_models
from ..propdpm.loop import FrameRequest
from ..propdpm.motion_inputs import check_flow_record, motion_record
from ..propdpm.schedule import ScheduleConfig, train_scheduler
from ..seeding import frame_seed
from .config import RunConfig, check_inputs, check_resume, check_values
from .data import make_source, sample_spec
from .encoders import ClipCache, FrozenEncoders
from .motion import flow_settings

log = get_logger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
EXPORT_NAME = "propdpm.safetensors"


class PropDPMTrainable(torch.nn.Module):
    """UNet + adapter as one module (one DDP wrapper), computing the v-prediction loss of a batch."""

    def __init__(self, unet, adapter: AppearanceAdapter) -> None:
        super().__init__()
        self.unet, self.adapter = unet, adapter

    def forward(self, unet_input, timesteps, tokens, ref_scaled, keep, target_v):
        context = self.adapter(tokens, ref_scaled) * keep[:, None, None]  # dropped samples see the null (zeros)
        pred = self.unet(unet_input, timesteps, encoder_hidden_states=context).sample
        return F.mse_loss(pred.float(), target_v.float())


@dataclass
class TrainState:
    """What the loop itself must restore on resume (the data position is the step: sampling is deterministic)."""

    step: int = 0
    samples: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "samples": self.samples}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.samples = int(state["step"]), int(state["samples"])


def _init_models(cfg: RunConfig, settings=None):
    """(unet, adapter) to train; a flow-guided run extends a paper-layout UNet with zero-initialised motion channels
    (``unet.extend_inputs``), so it starts as exactly the model it comes from."""
    from ..propdpm.unet import extend_inputs

    m = cfg.model
    if m.init_checkpoint:
        ckpt = load_checkpoint(m.init_checkpoint)
        if ckpt.config.flow_guided and not cfg.train.flow_guided:
            raise MagicPropError(f"model.init_checkpoint {Path(m.init_checkpoint).name} is a flow-guided PropDPM: set "
                                 "train.flow_guided=true to fine-tune it, or start from a paper-layout PropDPM.")
        if ckpt.config.flow_guided:
            check_flow_record(ckpt.config, settings.record(), "train.flow_estimator")
        unet, adapter = ckpt.build_unet(), ckpt.build_adapter()
    else:
        unet_config = m.unet_config
        if isinstance(unet_config, str):
            unet_config = json.loads(Path(unet_config).read_text())
        unet, adapter = initial_models(m.unet, unet_config, m.seed)
    if cfg.train.flow_guided:
        unet = extend_inputs(unet, FLOW_GUIDED_INPUTS)
    return unet, adapter


def propdpm_config(cfg: RunConfig, unet, adapter, encoders: FrozenEncoders, source_desc: dict,
                   step: int) -> PropDPMConfig:
    """The checkpoint metadata of a training run (the README's "Checkpoint format" fields, all from the run itself)."""
    d, t = cfg.data, cfg.train
    motion = {}
    if t.flow_guided:
        motion = motion_record(flow_settings(cfg), t.flow_strategy, t.flow_carry)
    return PropDPMConfig(
        unet_config={k: v for k, v in dict(unet.config).items() if not k.startswith("_")},
        adapter=adapter.config,
        schedule=ScheduleConfig(),
        latent_scale=encoders.latent_scale,
        clip=encoders.clip_spec,
        appearance_dropout=t.appearance_dropout,
        gap=GapDistribution(tuple(d.gaps), tuple(d.gap_weights), d.backward),
        prev_noise_augmentation=t.prev_noise_augmentation,
        previous_frame=t.previous_frame,
        resolution=int(source_desc.get("size") or 0) or 256,
        depth=DepthSpec(model=depth_model_of(cfg, source_desc)),
        vae={"scaling_factor": encoders.latent_scale, "config": {k: v for k, v in dict(encoders.vae.config).items()
                                                                 if not k.startswith("_")}},
        training={"steps": step, "batch_size": t.batch_size, "learning_rate": t.learning_rate, "seed": t.seed,
                  "ema_decay": t.ema_decay, "data": source_desc, "rollout_probability": t.rollout_probability,
                  "rollout_length": t.rollout_length, "rollout_steps": t.rollout_steps,
                  "initialised_from": Path(cfg.model.init_checkpoint or cfg.model.unet or "unet_config").name},
        inputs=FLOW_GUIDED_INPUTS if t.flow_guided else PAPER_INPUTS,
        motion=motion,
        motion_noise_augmentation=t.motion_noise_augmentation if t.flow_guided else 0.0,
    )


def depth_model_of(cfg: RunConfig, source_desc: dict) -> str:
    """What made the training depth: exact for synthetic clips; for shards, the depth model their index records
    (prepare's), else data.depth_model (shards from before the index recorded it)."""
    if cfg.data.source == "synthetic":
        return "synthetic (exact)"
    return source_desc.get("depth_model") or cfg.data.depth_model


class Batcher:
    """Assembles the tensors of a list of SampleSpecs from encoded clips."""

    def __init__(self, cache: ClipCache, scheduler, cfg: RunConfig, latent_scale: float, device,
                 rollout=None, motion=None) -> None:
        """motion: the run's ``train.motion.MotionCache`` (flow-guided runs), else None."""
        self.cache, self.scheduler, self.cfg, self.scale, self.device = cache, scheduler, cfg, latent_scale, device
        self.rollout = rollout  # [(encoded clip, spec)] -> the model's own (1, 4, h, w) previous latents, unscaled
        self.motion = motion
        inputs = FLOW_GUIDED_INPUTS if motion is not None else PAPER_INPUTS
        self.recipe = ConditionRecipe(latent_scale, cfg.train.previous_frame, cfg.train.prev_noise_augmentation,
                                      inputs)

    def __call__(self, specs) -> dict[str, torch.Tensor]:
        t_cfg = self.cfg.train
        rows = {k: [] for k in ("input", "t", "tokens", "ref", "keep", "v")}
        rolled = {}
        if self.rollout is not None and t_cfg.previous_frame:
            wanted = [(n, s) for n, s in enumerate(specs) if s.rollout]
            if wanted:
                outs = self.rollout([(self.cache.get(s.clip), s) for _, s in wanted])
                rolled = {n: latent for (n, _), latent in zip(wanted, outs)}
        for n, s in enumerate(specs):
            clip = self.cache.get(s.clip)
            target = clip.latents[s.target : s.target + 1] * self.scale
            noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(s.noise_seed))
            t = torch.tensor([s.timestep])
            noisy = self.scheduler.add_noise(target, noise, t)
            # the inference recipe, with the sample's noise seed as the frame seed
            request = FrameRequest(s.target, s.prev, rolled.get(n, clip.latents[s.prev : s.prev + 1]),
                                   clip.depth[s.target : s.target + 1], clip.depth[s.prev : s.prev + 1], s.noise_seed,
                                   **carried_fields(self.motion, s, s.target))
            cond = condition_for(request, self.recipe)
            rows["input"].append(torch.cat([noisy, cond], 1))
            rows["t"].append(t)
            rows["tokens"].append(clip.tokens[s.ref : s.ref + 1])
            rows["ref"].append(clip.latents[s.ref : s.ref + 1] * self.scale)
            rows["keep"].append(torch.tensor([0.0 if s.drop_appearance else 1.0]))
            rows["v"].append(self.scheduler.get_velocity(target, noise, t))
        return {k: torch.cat(v).to(self.device) for k, v in rows.items()}


def carried_fields(motion, spec, k: int) -> dict:
    """FrameRequest fields of frame k's motion inputs for a sample (none without a motion cache)."""
    if motion is None:
        return {}
    latent, valid = motion.get(spec.clip).carried(spec.ref, k)
    return {"carried_latent": latent, "carried_valid": valid, "motion_noise_level": spec.motion_level}


class Rollout:
    """The model's own previous frames for a batch of samples: from the true frame `rollout_length` steps further
    from each target, it generates frame after frame (as inference does, gap 1) up to the previous frame, all
    rollout samples of the batch together, without gradient."""

    def __init__(self, acc, module, meta: PropDPMConfig, cfg: RunConfig, motion=None) -> None:
        self.acc, self.module, self.meta, self.cfg, self.motion = acc, module, meta, cfg, motion

    @torch.no_grad()
    def __call__(self, items: list) -> list[torch.Tensor]:
        """items: [(encoded clip, spec)] -> the (1, 4, h, w) unscaled previous latent of each."""
        from ..propdpm.diffusers_backend import DiffusersDenoiser

        model = self.acc.unwrap_model(self.module)
        t = self.cfg.train
        device = next(model.parameters()).device
        chains, contexts, current = [], [], []
        for clip, spec in items:
            step = 1 if spec.prev > spec.target else -1  # the chain arrives at prev moving towards the target
            start = min(max(spec.prev + step * t.rollout_length, 0), clip.latents.shape[0] - 1)
            chains.append(list(range(start, spec.prev - step, -step)))
            tokens = clip.tokens[spec.ref : spec.ref + 1].to(device)
            ref = clip.latents[spec.ref : spec.ref + 1].to(device) * self.meta.latent_scale
            contexts.append(model.adapter(tokens, ref))
            current.append(clip.latents[start : start + 1])
        denoiser = DiffusersDenoiser(model.unet, self.meta, contexts[0], steps=t.rollout_steps)
        for j in range(1, max(len(c) for c in chains)):
            active = [n for n, c in enumerate(chains) if j < len(c)]
            requests = []
            for n in active:
                clip, spec = items[n]
                src, k = chains[n][j - 1], chains[n][j]
                requests.append(FrameRequest(k, src, current[n], clip.depth[k : k + 1], clip.depth[src : src + 1],
                                             frame_seed(spec.noise_seed, k), **carried_fields(self.motion, spec, k)))
            out = denoiser.batch(requests, torch.cat([contexts[n] for n in active])).cpu()
            for row, n in enumerate(active):
                current[n] = out[row : row + 1]
        return current


def trim_log(path: Path, step: int) -> None:
    """Drop log lines of steps after `step` (written before an interruption, and about to be run again)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))


def _checkpoint_dirs(out: Path) -> list[Path]:
    root = out / CHECKPOINTS
    return sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")) if root.is_dir() else []


def latest_checkpoint(out: Path) -> Path | None:
    pointer = out / CHECKPOINTS / LATEST
    if pointer.is_file():
        path = out / CHECKPOINTS / pointer.read_text().strip()
        if path.is_dir():
            return path
    dirs = _checkpoint_dirs(out)
    return dirs[-1] if dirs else None


def check_resumable(cfg: RunConfig) -> None:
    """Before any work: a run resuming in train.output_dir must have the config it was saved with, but for the keys
    `config.RESUMABLE` lets change (one MagicPropError line otherwise)."""
    out = Path(cfg.train.output_dir)
    saved = out / "config.json"
    if latest_checkpoint(out) is not None and saved.is_file():
        check_resume(json.loads(saved.read_text()), cfg, str(out))


def save_training_state(acc, out: Path, state: TrainState, keep: int) -> Path:
    """accelerate's full state (model, optimizer, LR schedule, RNG, loop state), written to a temporary folder
    and renamed into place; the `latest` pointer moves only after the rename, so a crash at any point leaves
    the previous checkpoint loadable."""
    root = out / CHECKPOINTS
    final = root / f"step-{state.step:08d}"
    tmp = root / f"step-{state.step:08d}.tmp"
    if acc.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        root.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        with atomic_path(root / LATEST) as p:
            p.write_text(final.name)
        for old in _checkpoint_dirs(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def train(cfg: RunConfig, progress: bool = True, stop_after: int | None = None) -> Path:
    """Run (or resume) training; returns the exported PropDPM checkpoint. `stop_after` ends the run early at that
    step (as an interruption would), after its checkpoint."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    t_cfg = cfg.train
    check_values(cfg)
    check_inputs(cfg)
    check_resumable(cfg)
    # without an accelerator, several processes (e.g. `accelerate launch --multi_gpu --num_processes 2`) run as
    # accelerate's MULTI_CPU over gloo
    acc = Accelerator(mixed_precision=t_cfg.mixed_precision, cpu=not torch.accelerator.is_available())
    world, rank = acc.num_processes, acc.process_index
    if t_cfg.batch_size % world:
        raise MagicPropError(f"train.batch_size={t_cfg.batch_size} is not divisible by {world} processes.")
    local = t_cfg.batch_size // world
    out = Path(t_cfg.output_dir)

    settings = flow_settings(cfg, acc.device) if t_cfg.flow_guided else None
    source = make_source(cfg.data)
    encoders = FrozenEncoders(cfg.model.vae, cfg.model.clip_vision, acc.device, cfg.model.clip_name,
                              vae_input="model.vae")
    unet, adapter = _init_models(cfg, settings)
    if t_cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    module = PropDPMTrainable(unet, adapter).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=t_cfg.learning_rate, weight_decay=t_cfg.weight_decay)
    lr_schedule = get_scheduler(t_cfg.lr_schedule, optimizer, num_warmup_steps=t_cfg.warmup_steps * world,
                                num_training_steps=t_cfg.steps * world)
    module, optimizer, lr_schedule = acc.prepare(module, optimizer, lr_schedule)
    state = TrainState()
    acc.register_for_checkpointing(state)
    ema = None
    if t_cfg.ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(acc.unwrap_model(module).parameters(), decay=t_cfg.ema_decay)
        acc.register_for_checkpointing(ema)
    resume = latest_checkpoint(out)
    if resume is not None:
        acc.load_state(str(resume))
        if ema is not None:
            ema.to(acc.device)
        log.info("resumed from %s (step %d)", resume, state.step)

    scheduler = train_scheduler(ScheduleConfig())
    with acc.main_process_first():  # one process encodes a disk cache, the others load it
        cache = ClipCache(source, encoders, cfg.data.cache_latents, cfg.data.latent_cache,
                          progress and acc.is_main_process)
    motion = None
    if settings is not None:
        from ..motion.engine import FlowEngine
        from .motion import MotionCache

        with acc.main_process_first():
            motion = MotionCache(source, encoders, FlowEngine(settings), t_cfg.flow_strategy, t_cfg.flow_carry,
                                 cfg.data.motion_cache, progress and acc.is_main_process)
    rollout = None
    if t_cfg.rollout_probability > 0:
        base = acc.unwrap_model(module)
        meta = propdpm_config(cfg, base.unet, base.adapter, encoders, source.describe(), 0)
        rollout = Rollout(acc, module, meta, cfg, motion)
    batcher = Batcher(cache, scheduler, cfg, encoders.latent_scale, acc.device, rollout, motion)
    log_path = out / "log.jsonl"
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "config.json") as tmp:
            tmp.write_text(json.dumps(cfg.to_dict(), indent=1))
        trim_log(log_path, state.step)
    end = t_cfg.steps if stop_after is None else min(t_cfg.steps, stop_after)
    bar = tqdm(total=t_cfg.steps, initial=state.step, disable=not (progress and acc.is_main_process),
               desc="train", unit="step")
    t_last, samples_last = time.perf_counter(), state.samples
    while state.step < end:
        first = state.step * t_cfg.batch_size + rank * local
        specs = [sample_spec(t_cfg.seed, first + j, source, cfg.data.gaps, cfg.data.gap_weights,
                             cfg.data.backward, scheduler.config.num_train_timesteps, t_cfg.appearance_dropout,
                             t_cfg.rollout_probability, t_cfg.flow_guided, t_cfg.motion_noise_augmentation)
                 for j in range(local)]
        b = batcher(specs)
        loss = module(b["input"], b["t"], b["tokens"], b["ref"], b["keep"], b["v"])
        acc.backward(loss)
        if t_cfg.grad_clip:
            acc.clip_grad_norm_(module.parameters(), t_cfg.grad_clip)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(acc.unwrap_model(module).parameters())
        state.step += 1
        state.samples += t_cfg.batch_size
        mean_loss = acc.reduce(loss.detach(), "mean").item()
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        if acc.is_main_process and (state.step % t_cfg.log_every == 0 or state.step == end):
            now = time.perf_counter()
            rate = (state.samples - samples_last) / max(now - t_last, 1e-9)
            t_last, samples_last = now, state.samples
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": state.step, "loss": mean_loss, "lr": lr_schedule.get_last_lr()[0],
                                    "samples_per_s": rate}) + "\n")
        if state.step % t_cfg.checkpoint_every == 0 or state.step == end:
            save_training_state(acc, out, state, t_cfg.keep_checkpoints)
        if acc.is_main_process and t_cfg.validate_every and (state.step % t_cfg.validate_every == 0
                                                             or state.step == t_cfg.steps):
            from .validate import validate

            with eval_weights(acc, module, ema) as (unet_e, adapter_e):
                meta = propdpm_config(cfg, unet_e, adapter_e, encoders, source.describe(), state.step)
                validate(cfg, (unet_e, adapter_e), encoders, source, out, state.step, meta)
    bar.close()
    path = out / EXPORT_NAME
    if acc.is_main_process:
        with eval_weights(acc, module, ema) as (unet_e, adapter_e):
            meta = propdpm_config(cfg, unet_e, adapter_e, encoders, source.describe(), state.step)
            save_checkpoint(path, meta, unet_e, adapter_e)
        log.info("exported %s (step %d)", path, state.step)
    acc.wait_for_everyone()
    acc.end_training()
    return path


@contextlib.contextmanager
def eval_weights(acc, module, ema):
    """(unet, adapter) of the live model in eval mode, with the EMA weights swapped in while inside."""
    model = acc.unwrap_model(module)
    params = list(model.parameters())
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    model.eval()
    try:
        yield model.unet, model.adapter
    finally:
        model.train()
        if ema is not None:
            ema.restore(params)
