"""Both front ends, one run: the CLI and the ComfyUI node build the same run inputs from the same files and, with
one denoiser injected into both, give the same latents; the node never loads the diffusers backend."""

from __future__ import annotations

import sys

import pytest
import torch
from graphs import propagation_graph
from test_host_graph import files  # noqa: F401  (the fixture)

from magicprop.io.images import load_image, save_image
from magicprop.io.stream import write_video
from magicprop.io.video import read_frames
from magicprop.jobs.propagate import PropagateJob, propagate_latents
from magicprop.synthetic import SceneConfig, make_clip

pytestmark = pytest.mark.host

K, SIZE, SEED, WINDOW = 6, 48, 5, 2


class SharedDenoiser:
    """A deterministic stand-in FrameDenoiser (the same object serves both front ends): reads every request field."""

    def __init__(self, key: int) -> None:
        self.key = key

    def denoise(self, jobs: list) -> torch.Tensor:
        return torch.cat([0.8 * req.prev_latent + 0.3 * (req.depth - req.prev_depth)
                          + 0.05 * (d.key + 1) * torch.sin(3 * req.prev_latent) for d, req in jobs])


def shared_factory(i: int, _index: int) -> SharedDenoiser:
    return SharedDenoiser(i)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory) -> dict:
    """A synthetic clip written as files: an mp4, one 8-bit PNG depth map per frame, edited frames and the depth of
    each edit."""
    folder = tmp_path_factory.mktemp("run_clip")
    pair = make_clip(11, SceneConfig(size=SIZE, frames=K))
    write_video(folder / "clip.mp4", pair.source.frames, 10, crf=0, pix_fmt="yuv444p")
    (folder / "depth").mkdir()
    for k in range(K):
        save_image(folder / "depth" / f"{k:03d}.png", pair.source.depth[k][..., None].expand(-1, -1, 3))
        save_image(folder / f"edit-{k}.png", pair.edit.frames[k])
        # an edit that changed the shapes: another depth map, mirrored and on its own scale
        edited_depth = 0.2 + 0.7 * pair.source.depth[(k + 3) % K].flip(-1)
        save_image(folder / f"edit-depth-{k}.png", edited_depth[..., None].expand(-1, -1, 3))
    return {"folder": folder, "video": folder / "clip.mp4"}


def _images(paths) -> torch.Tensor:
    return torch.cat([load_image(p) for p in paths])


@pytest.mark.parametrize("keys,with_depth,anchor", [([3], False, 0.0), ([0, 5], True, 0.0), ([1, 4], True, 0.5)],
                         ids=["mid-clip reference", "two keyframes with reference depth", "anchoring"])
def test_cli_and_node_build_the_same_run_and_give_the_same_latents(comfy_host, tiny_models, clip_files, keys,
                                                                   with_depth, anchor, tmp_path):
    from diffusers import AutoencoderKL
    from host_models import comfy_vae

    folder = clip_files["folder"]
    references = [folder / f"edit-{k}.png" for k in keys]
    reference_depth = [folder / f"edit-depth-{k}.png" for k in keys] if with_depth else None
    job = PropagateJob(checkpoint=tiny_models["checkpoint"], video=clip_files["video"], reference=references,
                       reference_index=keys, out=tmp_path / "out.mp4", vae=tiny_models["vae"],
                       clip_vision=tiny_models["clip_vision"], depth_frames=folder / "depth",
                       reference_depth=reference_depth, seed=SEED, keyframe_window=WINDOW, anchor_strength=anchor)
    cli_latents, loaded, models = propagate_latents(job, progress=False, make_denoiser=shared_factory)
    cli = loaded.run_inputs(models)

    # the node's side, in the real host: DepthSequence on the same depth maps, the pack's own run-input builder
    depth_maps = _images(sorted((folder / "depth").glob("*.png")))
    frames = read_frames(clip_files["video"])
    depth = comfy_host.node_class("DepthSequence").execute(frames, "none", 8, depth_maps).result[0]
    vae = comfy_vae(AutoencoderKL.from_pretrained(tiny_models["vae"]))
    node_module = comfy_host.module("nodes.propdpm.propagate")
    node = node_module.node_run_inputs(vae, depth, _images(references), keys,
                                       _images(reference_depth) if with_depth else None)

    assert node.indices == cli.indices == tuple(keys)
    torch.testing.assert_close(node.reference_latents, cli.reference_latents, atol=1e-6, rtol=0)
    torch.testing.assert_close(node.depth, cli.depth, atol=1e-6, rtol=0)
    assert cli.depth.shape == (K, 1, SIZE // 8, SIZE // 8)
    if with_depth:
        assert cli.reference_depth.shape == (len(keys), 1, SIZE // 8, SIZE // 8)
        torch.testing.assert_close(node.reference_depth, cli.reference_depth, atol=1e-6, rtol=0)
        assert (cli.reference_depth - cli.depth[list(keys)]).abs().max() > 0.05, "the edit changed the depth"
    else:
        assert node.reference_depth is None and cli.reference_depth is None

    # the node's run, as its execute() makes it, with the shared denoiser instead of ComfyUI's samplers
    node_latents = comfy_host.module("magicprop.propdpm.run").propagate_run(node, shared_factory, SEED, WINDOW, anchor)
    assert node_latents.shape == cli_latents.shape == (K, 4, SIZE // 8, SIZE // 8)
    torch.testing.assert_close(node_latents, cli_latents, atol=1e-5, rtol=0)
    for i, k in enumerate(keys):
        torch.testing.assert_close(cli_latents[k], cli.reference_latents[i])
    others = [k for k in range(K) if k not in keys]
    assert all((cli_latents[k] - cli_latents[keys[0]]).abs().max() > 1e-3 for k in others), "frames are generated"


def test_the_node_never_loads_the_diffusers_backend(comfy_host, files):  # noqa: F811
    ex = comfy_host.run(propagation_graph(files, frames=3, ref=1, steps=1), ["12"])
    assert comfy_host.output(ex, "12", 0)["samples"].shape[0] == 3
    pack = comfy_host.pack_module + "."
    mine = {m[len(pack):] for m in sys.modules if m.startswith(pack)}
    assert {"magicprop.propdpm.run", "magicprop.propdpm.conditioning", "nodes.propdpm.propagate"} <= mine, sorted(mine)
    assert "magicprop.propdpm.diffusers_backend" not in mine, "the node pack imported the diffusers backend"
