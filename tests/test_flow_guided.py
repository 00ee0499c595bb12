"""The flow-guided PropDPM: declared motion inputs, the checkpoint's estimator, the pixel composite, the trainer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from magicprop.backend import DiffusersDenoiser, StandaloneModels
from magicprop.checkpoint import convert_checkpoint, inspect_checkpoint, load_checkpoint, save_checkpoint
from magicprop.conditioning import FLOW_GUIDED_INPUTS, PAPER_INPUTS, condition_for
from magicprop.config import PropDPMConfig
from magicprop.errors import CheckpointError, MagicPropError
from magicprop.motion.engine import FlowEngine, FlowSettings
from magicprop.motion_inputs import composite_carried, flow_guided_model
from magicprop.propagate import FrameRequest, frame_seed
from magicprop.run import propagate_images
from magicprop.synthetic import SceneConfig, make_clip

SETTINGS = FlowSettings(estimator="dis", preset="ultrafast", work_size=64)


def one_line(e) -> str:
    message = str(e.value)
    assert "\n" not in message, message
    return message


def make_flow_guided(paper: Path, out: Path, perturb: bool = True, noise: float = 0.0) -> Path:
    """A flow-guided tiny checkpoint from a paper one (new channels zero, or seeded random when `perturb`)."""
    ckpt = load_checkpoint(paper)
    config, unet = flow_guided_model(ckpt.config, ckpt.build_unet(), SETTINGS, "guided", "edit", noise)
    if perturb:
        with torch.no_grad():
            w = unet.conv_in.weight
            g = torch.Generator().manual_seed(3)
            w[:, 10:] = torch.randn(w[:, 10:].shape, generator=g) * w[:, :4].std()
    return save_checkpoint(out, config, unet, ckpt.build_adapter())


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
    for key in ("inputs", "motion", "motion_noise_augmentation"):
        data.pop(key)
    old = PropDPMConfig.from_json(json.dumps(data))
    assert old.inputs == PAPER_INPUTS and old.motion == {} and not old.flow_guided and old == config


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
    a = DiffusersDenoiser(paper.build_unet(), paper.config, tokens, steps=3)(request())
    b = DiffusersDenoiser(extended.build_unet(), extended.config, tokens, steps=3)(request())
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
