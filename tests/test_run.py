"""The run layer: one core for every front end; the condition recipe shared by trainer and backends."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from chains import iter_chain

from magicprop.errors import MagicPropError
from magicprop.propdpm.conditioning import AUGMENT_SEED_SALT, condition_for
from magicprop.propdpm.depth import depth_to_latent_grid
from magicprop.propdpm.diffusers_backend import FrozenEncoders, StandaloneModels
from magicprop.propdpm.drift import anchor_statistics
from magicprop.propdpm.loop import FrameRequest, denoise_frame
from magicprop.propdpm.run import place_reference_depth, propagate_images, run_inputs, teacher_forced
from magicprop.seeding import frame_seed
from magicprop.synthetic import SceneConfig, make_clip

STEPS = 2


@pytest.fixture(scope="module")
def models(tiny_models) -> StandaloneModels:
    return StandaloneModels.load(tiny_models["checkpoint"], tiny_models["vae"], tiny_models["clip_vision"])


@pytest.fixture(scope="module")
def pair():
    return make_clip(7, SceneConfig(size=32, frames=5))


def test_propagate_images_is_the_chain_of_eq6_from_the_reference(models, pair):
    """MagicProp eq. 6 written out by hand for a reference at r = 2 of 5 frames: z^2 = E(x^#); forward z^3, z^4 and
    backward z^1, z^0, each one call of the reference's denoiser on its predecessor's latent and depth with frame k's
    seed, anchored to the reference's channel statistics before the next frame reads it; then decoded."""
    reference, depth = pair.edit.frames[2:3], pair.source.depth
    seed = 3
    for anchor in (0.0, 0.5):
        ours = propagate_images(models, reference, depth, 2, steps=STEPS, seed=seed, cfg=2.0, anchor_strength=anchor)
        z_ref = models.encode(reference)
        grid = depth_to_latent_grid(depth[:, None].float(), tuple(z_ref.shape[-2:]))
        step = models.denoiser(reference, z_ref, STEPS, 2.0)
        z = {2: z_ref}
        for k, prev in ((3, 2), (4, 3), (1, 2), (0, 1)):
            request = FrameRequest(k, prev, z[prev], grid[k : k + 1], grid[prev : prev + 1], frame_seed(seed, k))
            made = denoise_frame(step, request)
            z[k] = anchor_statistics(made, z_ref, anchor)
        expected = models.decode(torch.cat([z[k] for k in range(5)]))
        # the run samples the two chains' frames in one batch: equal up to a batched convolution's rounding
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0,
                                   msg=lambda m, anchor=anchor: f"anchor {anchor}: {m}")
        torch.testing.assert_close(ours[2], models.decode(z_ref)[0], atol=1e-5, rtol=0)
    assert (ours[3] - ours[4]).abs().max() > 1e-2, "frames are generated, not copied"


def test_teacher_forced_makes_each_frame_from_the_true_previous_frame(models, pair):
    """Frame k is the first frame a chain from the TRUE frame k-1 makes (frame 0's appearance, frame k's
    seed); so changing true frame 3 changes output frame 4 and nothing else."""
    truth, depth = pair.edit.frames, pair.source.depth
    seed = 4
    ours = teacher_forced(models, truth, depth, steps=STEPS, seed=seed)
    latents = models.encode(truth)
    grid = depth_to_latent_grid(depth[:, None].float(), tuple(latents.shape[-2:]))
    appearance = models.denoiser(truth[:1], latents[:1], STEPS)
    torch.testing.assert_close(ours[0], models.decode(latents[:1])[0], atol=1e-5, rtol=0)
    for k in range(1, 5):
        [(index, from_truth)] = iter_chain(appearance, [k - 1, k], latents[k - 1 : k], grid, seed)
        assert index == k
        torch.testing.assert_close(ours[k], models.decode(from_truth)[0], atol=1e-5, rtol=0)
    changed = truth.clone()
    changed[3] = 1 - changed[3]
    other = teacher_forced(models, changed, depth, steps=STEPS, seed=seed)
    assert torch.equal(other[:4], ours[:4]), "true frame 3 only feeds frame 4"
    assert (other[4] - ours[4]).abs().max() > 1e-2


def test_inference_augmentation_is_drawn_from_the_frame_seed(models):
    """The previous-latent noise augmentation draws from seed ^ AUGMENT_SEED_SALT: the same draws as before."""
    g = torch.Generator().manual_seed(0)
    req = FrameRequest(3, 2, torch.randn(1, 4, 4, 6, generator=g), torch.rand(1, 1, 4, 6, generator=g),
                       torch.rand(1, 1, 4, 6, generator=g), frame_seed(9, 3))
    level, scale = 0.3, models.config.latent_scale
    config = dataclasses.replace(models.config, prev_noise_augmentation=level)
    noise = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(req.seed ^ AUGMENT_SEED_SALT))
    expected_prev = (1 - level**2) ** 0.5 * req.prev_latent * scale + level * noise
    cond = condition_for(req, config)
    torch.testing.assert_close(cond[:, :4], expected_prev)
    torch.testing.assert_close(cond[:, 4:5], req.depth * 2 - 1)
    torch.testing.assert_close(cond[:, 5:6], req.prev_depth * 2 - 1)
    assert torch.equal(condition_for(req, dataclasses.replace(config, previous_frame=False))[:, :4],
                       level * noise), "without a previous frame only the augmentation noise is left"


def test_trainer_batches_use_the_inference_recipe(models):
    """The Batcher's condition channels are condition_for's for the sample's request under the run's settings."""
    from magicprop.propdpm.schedule import ScheduleConfig, train_scheduler
    from magicprop.train.data import SampleSpec
    from magicprop.train.encoders import EncodedClip
    from magicprop.train.loop import Batcher

    g = torch.Generator().manual_seed(1)
    clip = EncodedClip(torch.randn(4, 4, 4, 6, generator=g), torch.randn(4, 5, 32, generator=g),
                       torch.rand(4, 1, 4, 6, generator=g))
    cache = SimpleNamespace(get=lambda i: clip)
    scale = models.config.latent_scale
    for previous_frame, level in ((True, 0.0), (True, 0.2), (False, 0.2)):
        cfg = SimpleNamespace(train=SimpleNamespace(previous_frame=previous_frame, prev_noise_augmentation=level))
        batcher = Batcher(cache, train_scheduler(ScheduleConfig()), cfg, scale, "cpu")
        specs = [SampleSpec(0, 0, 1, 2, 500, False, 77), SampleSpec(0, 3, 3, 1, 20, True, 78)]
        inputs = batcher(specs)["input"]
        settings = dataclasses.replace(models.config, previous_frame=previous_frame, prev_noise_augmentation=level)
        for row, s in enumerate(specs):
            req = FrameRequest(s.target, s.prev, clip.latents[s.prev : s.prev + 1],
                               clip.depth[s.target : s.target + 1], clip.depth[s.prev : s.prev + 1], s.noise_seed)
            assert torch.equal(inputs[row : row + 1, 4:], condition_for(req, settings)), (previous_frame, level)


def test_reference_depth_is_placed_on_the_clip_scale_at_the_latent_grid(pair):
    depth = depth_to_latent_grid(pair.source.depth[:, None], (8, 8))  # (K, 1, 8, 8), the clip's scale
    raw = torch.stack([0.6 * pair.source.depth[0] + 0.3, 0.5 * pair.source.depth[4] + 0.1])  # other scale and shift
    placed = place_reference_depth(raw, depth, [0, 4])
    assert placed.shape == (2, 1, 8, 8)
    torch.testing.assert_close(placed, depth[[0, 4]], atol=1e-4, rtol=0)  # the affine is undone on the latent grid
    inputs = run_inputs(torch.zeros(2, 4, 8, 8), [0, 4], depth, raw)
    assert torch.equal(inputs.reference_depth, placed) and inputs.indices == (0, 4)
    with pytest.raises(MagicPropError, match=r"reference depth has shape \(1, 32, 32\): expected one depth map"):
        run_inputs(torch.zeros(2, 4, 8, 8), [0, 4], depth, raw[:1])


@pytest.mark.parametrize("indices,pattern", [
    ([0], r"keyframe indices \[0\] give 1 indices for 2 reference images"),
    ([3, 1], r"keyframe indices \[3, 1\]: expected distinct indices in increasing order"),
    ([0, 5], r"reference_index=5 is out of range for a clip of 5 frames"),
])
def test_run_inputs_refuse_bad_keyframes(indices, pattern):
    with pytest.raises(MagicPropError, match=pattern):
        run_inputs(torch.zeros(2, 4, 4, 4), indices, torch.zeros(5, 1, 4, 4))


def test_one_frozen_encoders_class_from_folders_or_modules(tiny_models):
    """The VAE trainer hands its module in; the CLI and the trainer hand folders in: the same encoders."""
    from diffusers import AutoencoderKL

    folder = FrozenEncoders(tiny_models["vae"], tiny_models["clip_vision"])
    module = FrozenEncoders(AutoencoderKL.from_pretrained(tiny_models["vae"]))
    images = torch.rand(2, 32, 48, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(folder.encode(images), module.encode(images))
    assert folder.clip_tokens(images).shape == (2, 17, 32) and folder.clip_spec.num_tokens == 17
    with pytest.raises(MagicPropError, match="no CLIP vision model"):
        module.clip_tokens(images)
