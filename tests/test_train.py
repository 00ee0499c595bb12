"""Training: it learns, it resumes exactly, it survives a crash mid-checkpoint, and N processes equal one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from magicprop.propdpm.checkpoint import inspect_checkpoint, load_checkpoint
from magicprop.tiny import TINY_UNET_CONFIG
from magicprop.train.config import load_config
from magicprop.train.loop import Batcher, PropDPMTrainable, latest_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]


def run_args(tiny_models, out: Path, **train) -> list[str]:
    """--set overrides of a tiny synthetic run."""
    base = {
        "model.unet_config": dict(TINY_UNET_CONFIG), "model.vae": str(tiny_models["vae"]),
        "model.clip_vision": str(tiny_models["clip_vision"]), "model.seed": 1,
        "data.source": "synthetic", "data.synthetic_clips": 3, "data.synthetic_size": 32,
        "data.synthetic_frames": 6, "train.output_dir": str(out), "train.batch_size": 4,
        "train.learning_rate": 1e-3, "train.warmup_steps": 0, "train.validate_every": 0, "train.log_every": 1,
        "train.checkpoint_every": 1000,
    }
    base.update({f"train.{k}": v for k, v in train.items()})
    return [f"{k}={json.dumps(v)}" for k, v in base.items()]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]


def weights(path: Path) -> dict:
    return load_file(str(path))


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst <= atol, worst


def fixed_batch_loss(checkpoint: Path, cfg, n: int = 16) -> float:
    """The v-loss of a checkpoint on a fixed batch (fixed clips, frames, timesteps and noise)."""
    from magicprop.propdpm.schedule import ScheduleConfig, train_scheduler
    from magicprop.train.data import make_source, sample_spec
    from magicprop.train.encoders import ClipCache, FrozenEncoders

    ckpt = load_checkpoint(checkpoint)
    module = PropDPMTrainable(ckpt.build_unet(), ckpt.build_adapter()).eval()
    source = make_source(cfg.data)
    enc = FrozenEncoders(cfg.model.vae, cfg.model.clip_vision, torch.device("cpu"))
    sched = train_scheduler(ScheduleConfig())
    batcher = Batcher(ClipCache(source, enc), sched, cfg, enc.latent_scale, "cpu")
    specs = [sample_spec(12345, i, source, cfg.data.gaps, cfg.data.gap_weights, cfg.data.backward, 1000, 0.0)
             for i in range(n)]
    b = batcher(specs)
    with torch.no_grad():
        return module(b["input"], b["t"], b["tokens"], b["ref"], b["keep"], b["v"]).item()


def test_overfit_loss_falls_5x(tmp_path, tiny_models):
    cfg0 = load_config(None, run_args(tiny_models, tmp_path / "init", steps=0))
    cfg = load_config(None, run_args(tiny_models, tmp_path / "run", steps=250, appearance_dropout=0.0))
    before = fixed_batch_loss(train(cfg0, progress=False), cfg)
    after = fixed_batch_loss(train(cfg, progress=False), cfg)
    assert after * 5 <= before, (before, after)


def test_resume_equals_uninterrupted(tmp_path, tiny_models):
    full = load_config(None, run_args(tiny_models, tmp_path / "full", steps=8, checkpoint_every=4))
    train(full, progress=False)
    parts = load_config(None, run_args(tiny_models, tmp_path / "parts", steps=8, checkpoint_every=4))
    train(parts, progress=False, stop_after=4)
    assert latest_checkpoint(tmp_path / "parts").name == "step-00000004"
    train(parts, progress=False)  # resumes at step 4
    assert len(losses(tmp_path / "parts")) == 8
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "parts")), torch.tensor(losses(tmp_path / "full")),
                               rtol=1e-5, atol=1e-6)
    assert_same_weights(tmp_path / "parts" / "propdpm.safetensors", tmp_path / "full" / "propdpm.safetensors", 1e-6)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_models, monkeypatch):
    from accelerate import Accelerator

    cfg = load_config(None, run_args(tiny_models, tmp_path / "run", steps=6, checkpoint_every=3))
    real_save = Accelerator.save_state
    calls = []

    def crashing_save(self, output_dir=None, **kw):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint dies half written
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half")
            raise OSError("killed while writing")
        return real_save(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", crashing_save)
    with pytest.raises(OSError, match="killed"):
        train(cfg, progress=False)
    monkeypatch.setattr(Accelerator, "save_state", real_save)
    assert latest_checkpoint(tmp_path / "run").name == "step-00000003"
    path = train(cfg, progress=False)  # resumes from step 3, finishes
    assert inspect_checkpoint(path).training["steps"] == 6
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()] == [
        1, 2, 3, 4, 5, 6], "the steps run before the crash are logged once"
    full = load_config(None, run_args(tiny_models, tmp_path / "full", steps=6, checkpoint_every=3))
    assert_same_weights(path, train(full, progress=False), 1e-6)


def test_two_processes_equal_one(tmp_path, tiny_models):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo) == one process, same global batch."""
    args = run_args(tiny_models, tmp_path / "two", steps=5, checkpoint_every=5)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "magicprop", "-q",
           "train"] + [a for kv in args for a in ("--set", kv)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_config(None, run_args(tiny_models, tmp_path / "one", steps=5, checkpoint_every=5))
    train(one, progress=False)
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "two")), torch.tensor(losses(tmp_path / "one")),
                               rtol=1e-4, atol=1e-5)
    # Adam divides by sqrt(v): where a gradient is ~0, all-reduce rounding moves that weight by up to ~lr, so the
    # weights are compared relative to how far training moved them (other samples would differ by ~100%)
    init = train(load_config(None, run_args(tiny_models, tmp_path / "init", steps=0)), progress=False)
    w0 = weights(init)
    w1, w2 = weights(tmp_path / "one" / "propdpm.safetensors"), weights(tmp_path / "two" / "propdpm.safetensors")
    moved = torch.cat([(w1[k] - w0[k]).flatten() for k in w0]).norm()
    apart = torch.cat([(w2[k] - w1[k]).flatten() for k in w0]).norm()
    assert apart <= 1e-2 * moved, (apart.item(), moved.item())
    assert [p.name for p in (tmp_path / "two").glob("*.safetensors")] == ["propdpm.safetensors"]
    states = list((tmp_path / "two" / "checkpoints").glob("step-*"))
    assert [p.name for p in states] == ["step-00000005"]
    assert {p.name for p in states[0].glob("random_states_*")} == {"random_states_0.pkl", "random_states_1.pkl"}


def test_export_has_every_design_field(tmp_path, tiny_models):
    path = train(load_config(None, run_args(tiny_models, tmp_path / "run", steps=2, prev_noise_augmentation=0.1)),
                 progress=False)
    cfg = inspect_checkpoint(path)
    assert cfg.unet_config["in_channels"] == 10 and cfg.schedule.prediction_type == "v_prediction"
    assert cfg.schedule.zero_terminal_snr and cfg.latent_scale == pytest.approx(0.18215)
    assert cfg.clip.num_tokens == 17 and cfg.clip.fingerprint and cfg.clip.crop == "none"
    assert cfg.appearance_dropout == 0.1 and cfg.null_tokens == "zeros"
    assert cfg.gap.gaps == (1, 2, 3, 4) and cfg.gap.backward == 0.5
    assert cfg.prev_noise_augmentation == 0.1 and cfg.resolution == 32
    assert cfg.depth.convention == "inverse_depth" and cfg.depth.model == "synthetic (exact)"
    assert cfg.training["steps"] == 2 and cfg.training["data"]["source"] == "synthetic"
    assert cfg.vae["scaling_factor"] == pytest.approx(0.18215)


def test_exported_checkpoint_runs_in_the_cli(tmp_path, tiny_models, bikes):
    """The trained checkpoint propagates in the CLI; the mp4 holds the decoded latents (frame 0: the reference's)."""
    from diffusers import AutoencoderKL

    from magicprop.cli import main
    from magicprop.io.images import crop_to_grid, load_image, resize_width, save_image
    from magicprop.io.video import read_frames

    path = train(load_config(None, run_args(tiny_models, tmp_path / "run", steps=2)), progress=False)
    save_image(tmp_path / "ref.png", read_frames(bikes, 1)[0])
    out = tmp_path / "out.mp4"
    assert main(["propagate", "--checkpoint", str(path), "--video", str(bikes),
                 "--reference", str(tmp_path / "ref.png"), "--reference-index", "0", "--out", str(out),
                 "--vae", str(tiny_models["vae"]), "--clip-vision", str(tiny_models["clip_vision"]),
                 "--depth-model", str(tiny_models["depth"]), "--frames", "3", "--width", "64", "--steps", "2",
                 "--crf", "0", "--pix-fmt", "yuv444p", "--device", "cpu"]) == 0
    frames = read_frames(out)
    ref = crop_to_grid(resize_width(load_image(tmp_path / "ref.png"), 64), notice=False)  # (1, 32, 64, 3)
    assert frames.shape == (3, *ref.shape[1:])
    vae = AutoencoderKL.from_pretrained(tiny_models["vae"]).eval()
    with torch.no_grad():  # frame r of a propagation is the reference latent, decoded
        latent = vae.encode(ref.movedim(-1, 1) * 2 - 1).latent_dist.mode()
        expected = ((vae.decode(latent).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
    error = (frames[0] - expected[0]).abs()
    assert error.mean() < 1.5 / 255 and error.max() < 8 / 255, (error.mean() * 255, error.max() * 255)
    assert (frames[1:] - frames[:1]).abs().mean() > 10 * error.mean(), "the other frames are generated, not copies"


def test_latent_disk_cache_is_reused(tmp_path, tiny_models):
    from magicprop.train.data import SyntheticSource
    from magicprop.train.encoders import ClipCache, FrozenEncoders

    enc = FrozenEncoders(tiny_models["vae"], tiny_models["clip_vision"], torch.device("cpu"))
    source = SyntheticSource(2, 0, 32, 4)
    path = tmp_path / "cache" / "clips.safetensors"
    first = ClipCache(source, enc, disk=path)
    assert path.is_file()
    second = ClipCache(source, enc, disk=path)  # loads, does not encode
    for i in range(2):
        for field in ("latents", "tokens", "depth"):
            assert torch.equal(getattr(first.get(i), field), getattr(second.get(i), field))
    assert first.get(0).latents.shape == (4, 4, 4, 4) and first.get(0).depth.shape == (4, 1, 4, 4)


def test_rollout_training_uses_the_models_own_previous_frames(tmp_path, tiny_models):
    """With rollouts the previous frame is generated by the model: other losses, same determinism."""
    plain = load_config(None, run_args(tiny_models, tmp_path / "plain", steps=2))
    roll = load_config(None, run_args(tiny_models, tmp_path / "roll", steps=2, rollout_probability=1.0,
                                      rollout_length=2, rollout_steps=2))
    again = load_config(None, run_args(tiny_models, tmp_path / "again", steps=2, rollout_probability=1.0,
                                       rollout_length=2, rollout_steps=2))
    for cfg in (plain, roll, again):
        train(cfg, progress=False)
    assert losses(tmp_path / "roll") == losses(tmp_path / "again")
    assert losses(tmp_path / "roll") != losses(tmp_path / "plain")
    assert inspect_checkpoint(tmp_path / "roll" / "propdpm.safetensors").training["rollout_probability"] == 1.0


def write_shards(folder: Path, clips: int, seed: int = 0, depth_model: str = "tiny-depth") -> Path:
    """Prepared shards (the prepare format, through its writer) of `clips` 4-frame 32 px synthetic clips."""
    from magicprop.train.data import SyntheticSource
    from magicprop.train.shards import ShardWriter, encode_clip_npz, new_index

    source = SyntheticSource(clips, seed, 32, 4)
    folder.mkdir(parents=True)
    writer = ShardWriter(folder, new_index({"size": 32, "frames": 4}, depth_model), clips_per_shard=8)
    for i in range(clips):
        c = source.clip(i)
        writer.add(f"clip{seed + i}", encode_clip_npz(c.frames.numpy(), c.depth.numpy()),
                   {"video": f"v{seed + i}", "frames": 4})
    writer.flush()
    return folder


def test_shard_checkpoint_records_the_shards_size_and_depth_model(tmp_path, tiny_models):
    shards = write_shards(tmp_path / "shards", 2)
    args = run_args(tiny_models, tmp_path / "run", steps=1) + ["data.source=shards", f"data.shards={shards}"]
    cfg = inspect_checkpoint(train(load_config(None, args), progress=False))
    assert cfg.resolution == 32 and cfg.depth.model == "tiny-depth", (cfg.resolution, cfg.depth.model)
    assert cfg.training["data"]["size"] == 32 and cfg.training["data"]["fingerprint"]


def test_latent_disk_cache_of_other_clips_is_encoded_again(tmp_path, tiny_models):
    """A cache written for 2 clips is not read as the 3 (other) clips of other shards: they are encoded again."""
    from magicprop.train.encoders import ClipCache, FrozenEncoders, encode_clip
    from magicprop.train.shards import ShardSource

    enc = FrozenEncoders(tiny_models["vae"], tiny_models["clip_vision"], torch.device("cpu"))
    path = tmp_path / "clips.safetensors"
    ClipCache(ShardSource(write_shards(tmp_path / "a", 2)), enc, disk=path)
    other = ShardSource(write_shards(tmp_path / "b", 3, seed=10))
    cache = ClipCache(other, enc, disk=path)
    for i in range(3):
        fresh = encode_clip(enc, other.clip(i)).latents.half().float()
        assert torch.equal(cache.get(i).latents, fresh), i
    again = ClipCache(other, enc, disk=path)  # now it is this data's cache: loaded
    assert torch.equal(again.get(2).latents, cache.get(2).latents)


def test_resume_refuses_a_changed_config_and_allows_more_steps(tmp_path, tiny_models):
    """Resuming with another learning rate or EMA would silently keep the restored ones: refused in one line, before
    any work; train.steps may change (train longer)."""
    from magicprop.errors import MagicPropError

    out = tmp_path / "run"
    train(load_config(None, run_args(tiny_models, out, steps=2, checkpoint_every=2)), progress=False)
    before = (out / "log.jsonl").read_text()
    for change, key in (({"learning_rate": 0.01}, "train.learning_rate = 0.01, was 0.001"),
                        ({"ema_decay": 0.9}, "train.ema_decay = 0.9, was null")):
        with pytest.raises(MagicPropError) as e:
            train(load_config(None, run_args(tiny_models, out, steps=4, checkpoint_every=2, **change)), progress=False)
        assert key in str(e.value) and "use a new train.output_dir" in str(e.value) and "\n" not in str(e.value)
        assert (out / "log.jsonl").read_text() == before, "refused before any work"
    path = train(load_config(None, run_args(tiny_models, out, steps=3, checkpoint_every=2, log_every=2)),
                 progress=False)
    assert inspect_checkpoint(path).training["steps"] == 3
