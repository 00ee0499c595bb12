"""The flow-guided PropDPM: declared motion inputs, the checkpoint's estimator, the pixel composite, the trainer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from tiny import flow_guided_checkpoint

from magicprop.errors import CheckpointError, MagicPropError
from magicprop.motion.engine import FlowEngine, FlowSettings
from magicprop.propdpm.checkpoint import convert_checkpoint, inspect_checkpoint, load_checkpoint, save_checkpoint
from magicprop.propdpm.conditioning import (
    FLOW_GUIDED_INPUTS,
    MOTION_SEED_SALT,
    PAPER_INPUTS,
    augment_generator,
    condition_for,
    noise_augment,
)
from magicprop.propdpm.config import PropDPMConfig
from magicprop.propdpm.diffusers_backend import DiffusersDenoiser, StandaloneModels
from magicprop.propdpm.loop import FrameRequest, denoise_frame
from magicprop.propdpm.motion_inputs import composite_carried
from magicprop.propdpm.run import propagate_images
from magicprop.seeding import frame_seed
from magicprop.synthetic import SceneConfig, make_clip

SETTINGS = FlowSettings(estimator="dis", preset="ultrafast", work_size=64)


def one_line(e) -> str:
    message = str(e.value)
    assert "\n" not in message, message
    return message


def make_flow_guided(paper: Path, out: Path, perturb: bool = True) -> Path:
    return flow_guided_checkpoint(paper, out, SETTINGS, perturb)


@pytest.fixture(scope="module")
def guided(tiny_models, tmp_path_factory) -> Path:
    return make_flow_guided(tiny_models["checkpoint"], tmp_path_factory.mktemp("fg") / "fg.safetensors")


@pytest.fixture(scope="module")
def pair():
    return make_clip(11, SceneConfig(size=32, frames=5))


def request(k: int = 2, carried: bool = True) -> FrameRequest:
    g = torch.Generator().manual_seed(k)
    extra = dict(carried_latent=torch.randn(1, 4, 4, 4, generator=g), carried_valid=torch.rand(1, 1, 4, 4, generator=g),
                 motion_noise_level=0.0) if carried else {}
    return FrameRequest(k, k - 1, torch.randn(1, 4, 4, 4, generator=g), torch.rand(1, 1, 4, 4, generator=g),
                        torch.rand(1, 1, 4, 4, generator=g), frame_seed(1, k), **extra)


# -- the declared inputs ---------------------------------------------------------------------------------------

def test_metadata_round_trips_through_save_load_and_convert(tmp_path, guided):
    config = load_checkpoint(guided).config
    assert config.inputs == FLOW_GUIDED_INPUTS and config.flow_guided
    assert config.unet_config["in_channels"] == 16
    assert config.motion == {**SETTINGS.record(), "strategy": "guided", "carry": "edit"}
    converted = convert_checkpoint(guided, tmp_path / "half.safetensors")
    assert inspect_checkpoint(converted) == config == PropDPMConfig.from_json(config.to_json())
    assert load_checkpoint(converted).unet_state["conv_in.weight"].shape[1] == 16


def test_old_metadata_without_the_fields_is_the_paper_layout(tiny_models):
    config = load_checkpoint(tiny_models["checkpoint"]).config
    data = json.loads(config.to_json())
    assert not {"inputs", "motion", "motion_noise_augmentation"} & set(data), \
        "a paper checkpoint is written as before these fields existed (older readers load it)"
    old = PropDPMConfig.from_json(json.dumps(data))
    assert old.inputs == PAPER_INPUTS and old.motion == {} and not old.flow_guided and old == config
    explicit = PropDPMConfig.from_json(json.dumps({**data, "inputs": list(PAPER_INPUTS), "motion": {}}))
    assert explicit == config


def test_inconsistent_layouts_are_refused_in_one_line(tmp_path, tiny_models, guided):
    ckpt = load_checkpoint(guided)
    with pytest.raises(CheckpointError, match="unknown_input") as e:
        dataclasses.replace(ckpt.config, inputs=(*PAPER_INPUTS, "unknown_input"))
    assert "carried_latent" in one_line(e)
    with pytest.raises(CheckpointError, match="names no flow estimator") as e:
        dataclasses.replace(ckpt.config, motion={})
    one_line(e)
    # a 16-channel UNet saved as the paper's layout: refused before any tensor is read
    wrong = dataclasses.replace(ckpt.config, inputs=PAPER_INPUTS, motion={})
    with pytest.raises(MagicPropError, match="in_channels=16.*takes 10 input channels") as e:
        save_checkpoint(tmp_path / "x.safetensors", wrong, ckpt.build_unet(), ckpt.build_adapter())
    one_line(e)


def test_condition_builds_the_declared_channels_and_names_a_missing_input(guided):
    config = load_checkpoint(guided).config
    req = request()
    cond = condition_for(req, config)
    assert cond.shape == (1, 12, 4, 4)
    assert torch.equal(cond[:, :6], condition_for(req, dataclasses.replace(config, inputs=PAPER_INPUTS, motion={})))
    torch.testing.assert_close(cond[:, 6:10], req.carried_latent * config.latent_scale)
    assert torch.equal(cond[:, 10:11], req.carried_valid) and torch.equal(cond[:, 11], torch.zeros(1, 4, 4))
    noisy = condition_for(dataclasses.replace(req, motion_noise_level=0.3), config)
    assert torch.equal(noisy[:, :6], cond[:, :6]) and not torch.equal(noisy[:, 6:10], cond[:, 6:10])
    assert torch.allclose(noisy[:, 11], torch.full((1, 4, 4), 0.3))
    with pytest.raises(MagicPropError, match="declares the input 'carried_latent'.*OpticalFlowSequence") as e:
        condition_for(request(carried=False), config)
    one_line(e)


def test_zero_initialised_extension_computes_the_paper_model(tiny_models, tmp_path):
    zero = make_flow_guided(tiny_models["checkpoint"], tmp_path / "zero.safetensors", perturb=False)
    paper, extended = (load_checkpoint(p) for p in (tiny_models["checkpoint"], zero))
    tokens = torch.randn(1, 5, paper.config.adapter.token_dim, generator=torch.Generator().manual_seed(0))
    a = denoise_frame(DiffusersDenoiser(paper.build_unet(), paper.config, tokens, steps=3), request())
    b = denoise_frame(DiffusersDenoiser(extended.build_unet(), extended.config, tokens, steps=3), request())
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# -- the composite and the estimator ---------------------------------------------------------------------------

def test_composite_keeps_carried_pixels_exactly():
    g = torch.Generator().manual_seed(0)
    decoded, carried = torch.rand(2, 40, 40, 3, generator=g), torch.rand(2, 40, 40, 3, generator=g)
    filled = torch.zeros(2, 40, 40)
    filled[0, 10:30, 5:35] = 1.0
    filled[1, :, 20:] = 0.7  # a blended share counts as filled
    for border in (0, 4, 16):
        out = composite_carried(decoded, carried, filled, border)
        keep = filled < 0.5
        assert torch.equal(out[keep], carried[keep]), border
        deep = torch.zeros_like(keep)
        deep[0, 10 + border : 30 - border, 5 + border : 35 - border] = True
        assert torch.equal(out[deep], decoded[deep]), border
    assert torch.equal(composite_carried(decoded, carried, filled, None), decoded)


def test_the_composite_feeds_the_next_frame_when_it_is_on():
    import torch.nn.functional as F

    from magicprop.propdpm.motion_inputs import CarriedDenoiser, CarriedFrames

    def decode(z):  # (B, 4, h, w) -> (B, 8h, 8w, 3)
        return F.interpolate(torch.sigmoid(z[:, :3]), scale_factor=8).movedim(1, -1)

    def encode(x):  # (B, H, W, 3) -> (B, 4, H/8, W/8)
        y = F.avg_pool2d(x.movedim(-1, 1), 8)
        return torch.cat([y, y[:, :1]], 1)

    g = torch.Generator().manual_seed(0)
    filled = torch.zeros(5, 32, 32)
    filled[:, 8:24, 8:24] = 1
    carried = CarriedFrames(torch.rand(5, 32, 32, 3, generator=g), filled, torch.randn(5, 4, 4, 4, generator=g),
                            torch.ones(5, 1, 4, 4))
    made = torch.randn(1, 4, 4, 4, generator=g)
    seen = []

    class Inner:
        def denoise(self, jobs):
            seen.extend(r for _, r in jobs)
            return made

    inner = Inner()

    req = request(carried=False)
    out = denoise_frame(CarriedDenoiser(inner, carried, encode=encode, decode=decode, border=4), req)
    assert torch.equal(seen[0].carried_latent, carried.latents[2:3]) and seen[0].motion_noise_level == 0.0
    assert torch.equal(out, encode(composite_carried(decode(made), carried.frames[2:3], filled[2:3], 4)))
    assert torch.equal(denoise_frame(CarriedDenoiser(inner, carried, encode=encode, decode=decode, border=None), req),
                       made)
    with pytest.raises(MagicPropError, match="feedback 'composite' needs the VAE") as e:
        CarriedDenoiser(inner, carried, feedback="composite", border=None)
    one_line(e)

def test_flow_guided_run_keeps_carried_pixels_and_refuses_other_flow(tiny_models, guided, pair):
    models = StandaloneModels.load(guided, tiny_models["vae"], tiny_models["clip_vision"])
    reference, depth, frames = pair.edit.frames[:1], pair.source.depth, pair.source.frames
    with pytest.raises(MagicPropError, match="flow-guided.*pass the source frames") as e:
        propagate_images(models, reference, depth, 0, steps=2)
    one_line(e)
    other = FlowEngine(dataclasses.replace(SETTINGS, preset="medium"))
    with pytest.raises(MagicPropError, match="preset medium.*trained with dis \\(preset ultrafast") as e:
        propagate_images(models, reference, depth, 0, steps=2, frames=frames, engine=other)
    one_line(e)
    from magicprop.motion.external import external_motion

    flow = torch.zeros(4, 32, 32, 2)
    with pytest.raises(MagicPropError, match="external flow.*cannot use") as e:
        propagate_images(models, reference, depth, 0, steps=2, frames=frames, motion=external_motion(flow, "forward",
                                                                                                       (32, 32)))
    one_line(e)

    from magicprop.motion.propagate import flow_propagate

    out = propagate_images(models, reference, depth, 0, steps=2, frames=frames, composite_border=4)
    carried = flow_propagate(frames, reference, [0], FlowEngine(SETTINGS))
    keep = carried.filled < 0.5
    assert out.shape == frames.shape and torch.equal(out[keep], carried.frames[keep])
    assert torch.equal(out[0], reference[0])



def test_keyframes_masks_and_anchoring_keep_working(tiny_models, guided, pair):
    from magicprop.propdpm.depth import depth_to_latent_grid
    from magicprop.propdpm.run import carried_for_run, latent_masks, propagate_run, run_inputs

    models = StandaloneModels.load(guided, tiny_models["vae"], tiny_models["clip_vision"])
    frames, refs, keys = pair.source.frames, pair.edit.frames[[0, 4]], [0, 4]
    mask = torch.zeros(1, 32, 32)
    mask[:, 4:28, 8:24] = 1.0
    carried = carried_for_run(models.config, frames, refs, keys, models.encode, FlowEngine(SETTINGS), mask=mask)
    latents = models.encode(refs)
    inputs = run_inputs(latents, keys, depth_to_latent_grid(pair.source.depth[:, None], (4, 4)), carried=carried)
    def run(max_batch: int) -> torch.Tensor:
        return propagate_run(inputs, lambda i, _k: models.denoiser(refs[i : i + 1], latents[i : i + 1], 1), 3,
                             window=1, anchor_strength=0.5, masks=latent_masks(mask, (4, 4)), encode=models.encode,
                             decode=models.decode, composite_border=4, max_batch=max_batch)

    out = run(0)  # both keyframes' chains in one call per round: motion inputs, anchoring, composite feedback
    torch.testing.assert_close(out, run(1), atol=1e-4, rtol=0)
    images = composite_carried(models.decode(out), carried.frames, carried.filled, 4)
    outside = (mask[0] == 0).expand(5, -1, -1)
    assert torch.equal(images[outside], frames[outside]), "outside the mask: the source frames, exactly"
    for n, k in enumerate(keys):
        assert torch.equal(images[k][mask[0] > 0], refs[n][mask[0] > 0]), k
    assert torch.equal(out[[0, 4]], latents)


# -- the trainer -----------------------------------------------------------------------------------------------

def train_args(tiny_models, out: Path, **train) -> list[str]:
    base = {
        "model.init_checkpoint": str(tiny_models["checkpoint"]), "model.vae": str(tiny_models["vae"]),
        "model.clip_vision": str(tiny_models["clip_vision"]), "data.source": "synthetic",
        "data.synthetic_clips": 2, "data.synthetic_size": 32, "data.synthetic_frames": 6,
        "train.output_dir": str(out), "train.batch_size": 4, "train.warmup_steps": 0, "train.validate_every": 0,
        "train.log_every": 1, "train.checkpoint_every": 1000, "train.flow_guided": True,
        "train.flow_preset": SETTINGS.preset, "train.flow_work_size": SETTINGS.work_size,
    }
    base.update({f"train.{k}": v for k, v in train.items()})
    return [f"{k}={json.dumps(v)}" for k, v in base.items()]


def test_trainer_smoke_run_makes_a_loadable_flow_guided_checkpoint(tmp_path, tiny_models, pair):
    from magicprop.train.config import load_config
    from magicprop.train.loop import train

    cfg = load_config(None, train_args(tiny_models, tmp_path / "run", steps=2, motion_noise_augmentation=0.2,
                                       rollout_probability=0.5, rollout_length=2, rollout_steps=1,
                                       validate_every=2, validation_steps=1))
    path = train(cfg, progress=False)
    ckpt = load_checkpoint(path)
    assert ckpt.config.inputs == FLOW_GUIDED_INPUTS and ckpt.unet_state["conv_in.weight"].shape[1] == 16
    assert ckpt.config.motion == {**SETTINGS.record(), "strategy": "guided", "carry": "edit"}
    assert ckpt.config.motion_noise_augmentation == 0.2
    assert any("val_psnr" in line for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines())
    models = StandaloneModels.load(path, tiny_models["vae"], tiny_models["clip_vision"])
    out = propagate_images(models, pair.edit.frames[:1], pair.source.depth, 0, steps=1, frames=pair.source.frames)
    assert out.shape == pair.source.frames.shape and torch.isfinite(out).all()
    with pytest.raises(MagicPropError, match="train.flow_carry='warp'") as e:
        train(load_config(None, train_args(tiny_models, tmp_path / "bad", steps=1, flow_carry="warp")), progress=False)
    one_line(e)


def test_trainer_batches_carry_the_anchor_reference_through_the_source_flow(tiny_models):
    from magicprop.motion.propagate import flow_propagate
    from magicprop.propdpm.diffusers_backend import FrozenEncoders
    from magicprop.propdpm.motion_inputs import encode_carried
    from magicprop.propdpm.schedule import ScheduleConfig, train_scheduler
    from magicprop.train.config import load_config
    from magicprop.train.data import make_source, sample_spec
    from magicprop.train.encoders import ClipCache
    from magicprop.train.loop import Batcher
    from magicprop.train.motion import MotionCache, anchors

    cfg = load_config(None, train_args(tiny_models, Path("unused"), motion_noise_augmentation=0.2))
    source = make_source(cfg.data)
    enc = FrozenEncoders(cfg.model.vae, cfg.model.clip_vision)
    motion = MotionCache(source, enc, FlowEngine(SETTINGS), "guided", "edit")
    specs = [sample_spec(5, i, source, cfg.data.gaps, cfg.data.gap_weights, cfg.data.backward, 1000, 0.0, 0.0,
                         True, 0.2) for i in range(8)]
    assert all(s.ref in anchors(6) and s.ref != s.target and 0 <= s.motion_level < 0.2 for s in specs)
    paper = [sample_spec(5, i, source, cfg.data.gaps, cfg.data.gap_weights, cfg.data.backward, 1000, 0.0)
             for i in range(8)]
    assert [dataclasses.replace(s, ref=0, motion_level=0.0) for s in specs] == \
        [dataclasses.replace(s, ref=0) for s in paper], "the paper layout's draws are unchanged"
    batch = Batcher(ClipCache(source, enc), train_scheduler(ScheduleConfig()), cfg, enc.latent_scale, "cpu",
                    motion=motion)(specs)
    assert batch["input"].shape[1] == 16
    s = specs[0]
    frames = source.clip(s.clip).frames.float() / 255
    result = flow_propagate(frames, frames[s.ref : s.ref + 1], [s.ref], FlowEngine(SETTINGS), carry="edit")
    latents, valid = encode_carried(result.frames, result.filled, enc.encode)
    assert torch.equal(batch["input"][:1, 14:15], valid[s.target : s.target + 1].half().float())
    clean = latents[s.target : s.target + 1].half().float() * enc.latent_scale
    torch.testing.assert_close(batch["input"][:1, 10:14], noise_augment(clean, s.motion_level, augment_generator(
        s.noise_seed, MOTION_SEED_SALT)))
    assert s.motion_level > 0 and torch.allclose(batch["input"][0, 15], torch.full((4, 4), s.motion_level))


# -- the command line ------------------------------------------------------------------------------------------

def test_cli_propagate_uses_the_checkpoints_estimator_and_refuses_another(tmp_path, tiny_models, guided, bikes,
                                                                          capfd):
    from magicprop.cli import main
    from magicprop.io.images import crop_to_grid, resize_width, save_image
    from magicprop.io.video import read_frames
    from magicprop.motion.propagate import flow_propagate

    frames = crop_to_grid(resize_width(read_frames(bikes, 4), 64), notice=False)  # (4, 24, 64, 3)
    save_image(tmp_path / "ref.png", 1 - read_frames(bikes, 2)[1])
    out = tmp_path / "out.mp4"
    args = ["-q", "propagate", "--checkpoint", str(guided), "--video", str(bikes),
            "--reference", str(tmp_path / "ref.png"), "--reference-index", "1", "--out", str(out),
            "--vae", str(tiny_models["vae"]), "--clip-vision", str(tiny_models["clip_vision"]),
            "--depth-model", str(tiny_models["depth"]), "--frames", "4", "--width", "64", "--steps", "1",
            "--no-audio", "--crf", "0", "--pix-fmt", "yuv444p", "--device", "cpu"]
    for bad, pattern in ((["--flow-preset", "medium"], "--flow dis was estimated with dis (preset medium"),
                         (["--flow", "farneback"], "--flow farneback was estimated with farneback")):
        assert main(args[:2] + bad + args[2:]) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and pattern in err[0] and "trained with dis (preset ultrafast" in err[0], err
        assert not out.exists()
    assert main(args[:2] + ["--flow", "dis"] + args[2:]) == 0
    written = read_frames(out)
    assert written.shape == frames.shape
    reference = crop_to_grid(resize_width((1 - read_frames(bikes, 2)[1:2]), 64), notice=False)
    carried = flow_propagate(frames, reference, [1], FlowEngine(SETTINGS))
    keep = carried.filled < 0.5
    assert (written[keep] - carried.frames[keep]).abs().mean() < 1.5 / 255, "carried pixels, to the codec's precision"
