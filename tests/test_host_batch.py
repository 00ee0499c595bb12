"""Independent chains batched in the real ComfyUI: AutoregressivePropagate samples the ready frames of every chain
in ONE comfy.sample.sample call per round (a mid-clip reference's forward and backward frames; every keyframe's
chains), with each sample's own spatial condition, appearance tokens and ControlNet hint; the latents equal the
one-frame-at-a-time run (max_batch=1) with euler and ddim, with cfg > 1, and with a flow-guided checkpoint.

"Equal" is to 1e-4 of the latents' range: the host's CPU kernels round differently for a batch of 2 than for 1
(~2e-5 of the range after one round here, the same frame twice in one batch giving identical rows), and the tiny
untrained PropDPM (latents up to ~10) carries that rounding on along its chains."""

from __future__ import annotations

import pytest
import torch
from graphs import add_depth_controlnet, propagation_graph
from test_host_flow_guided import files as guided_files  # noqa: F401  (the fixture)
from test_host_flow_guided import flow_guided_graph
from test_host_graph import files  # noqa: F401  (the fixture)

from magicprop.keyframes import keyframe_plan

pytestmark = pytest.mark.host

FRAMES = 7


def three_keyframes(graph: dict, keys=(0, 4, 8), window: int = 2) -> dict:
    """The graph with edited frames at `keys` (each the inverted source frame) batched as the references."""
    ids = []
    for n, k in enumerate(keys):
        graph[f"5{n}"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["4", 0], "batch_index": k, "length": 1}}
        graph[f"6{n}"] = {"class_type": "ImageInvert", "inputs": {"image": [f"5{n}", 0]}}
        ids.append(f"6{n}")
    graph["70"] = {"class_type": "ImageBatch", "inputs": {"image1": [ids[0], 0], "image2": [ids[1], 0]}}
    graph["71"] = {"class_type": "ImageBatch", "inputs": {"image1": ["70", 0], "image2": [ids[2], 0]}}
    graph["11"]["inputs"]["reference"] = ["71", 0]
    graph["12"]["inputs"].update(reference=["71", 0], keyframe_indices=", ".join(map(str, keys)),
                                 keyframe_window=window)
    return graph


def layout_graph(paths: dict, layout: str, **kw) -> dict:
    if layout == "mid-clip reference":
        return propagation_graph(paths, frames=FRAMES, ref=3, steps=2, **kw)
    return three_keyframes(propagation_graph(paths, frames=FRAMES, ref=0, steps=2, **kw), keys=(0, 3, 6))


def assert_equal_runs(batched: torch.Tensor, sequential: torch.Tensor) -> None:
    scale = float(sequential.abs().max())
    print(f"batched vs one at a time: {float((batched - sequential).abs().max()) / scale:.2e} of the range {scale:.1f}")
    torch.testing.assert_close(batched, sequential, atol=1e-4 * scale, rtol=0)


def latents_of(comfy_host, graph: dict, max_batch: int) -> torch.Tensor:
    graph["12"]["inputs"]["max_batch"] = max_batch
    ex = comfy_host.run(graph, ["12"])
    return comfy_host.output(ex, "12", 0)["samples"]


@pytest.mark.parametrize("sampler,scheduler", [("euler", "simple"), ("ddim", "ddim_uniform")])
@pytest.mark.parametrize("layout", ["mid-clip reference", "3 keyframes"])
def test_batched_node_equals_one_frame_at_a_time(comfy_host, files, layout, sampler, scheduler):  # noqa: F811
    import comfy.sample

    graph = layout_graph(files, layout, sampler=sampler, scheduler=scheduler)
    sizes = []
    real = comfy.sample.sample

    def spy(model, noise, *args, **kwargs):
        sizes.append(noise.shape[0])
        return real(model, noise, *args, **kwargs)

    comfy.sample.sample = spy
    try:
        batched = latents_of(comfy_host, graph, 0)
        calls_batched, sizes[:] = list(sizes), []
        sequential = latents_of(comfy_host, graph, 1)
    finally:
        comfy.sample.sample = real
    keys = [3] if layout == "mid-clip reference" else [0, 3, 6]
    chains = keyframe_plan(keys, FRAMES, 2 if len(keys) > 1 else 8)[0]
    assert set(sizes) == {1} and len(sizes) == sum(len(c.indices) - 1 for c in chains)
    assert max(calls_batched) == len(chains) and sum(calls_batched) == len(sizes)
    assert len(calls_batched) == max(len(c.indices) for c in chains) - 1, "one sampler call per round"
    assert_equal_runs(batched, sequential)


def test_batched_controlnet_gives_each_sample_its_frames_hint_with_cfg(comfy_host, files):  # noqa: F811
    import host_nodes

    graph = propagation_graph(files, frames=5, ref=2, steps=2, cfg=2.0)
    add_depth_controlnet(graph)
    host_nodes.CONTROL_LOG.clear()
    batched = latents_of(comfy_host, graph, 0)
    ex = comfy_host.run(graph, ["5"])
    depth = comfy_host.output(ex, "5", 0).movedim(-1, 1)  # (K, 3, H, W), what ControlNetApplyAdvanced was given
    rounds = [[1, 3], [0, 4]]  # backward r-j with forward r+j, in keyframe_plan's chain order
    seen = []
    for hint in host_nodes.CONTROL_LOG:
        if not seen or not torch.equal(seen[-1], hint):
            seen.append(hint)
    assert len(seen) == len(rounds)
    for hint, frames in zip(seen, rounds):
        assert torch.equal(hint, depth[frames]), frames
    assert_equal_runs(batched, latents_of(comfy_host, graph, 1))


def test_batched_flow_guided_node_equals_one_frame_at_a_time(comfy_host, guided_files):  # noqa: F811
    graph = flow_guided_graph(guided_files, frames=5, ref=2, steps=2)
    ex = comfy_host.run({**graph, "12": {**graph["12"], "inputs": {**graph["12"]["inputs"], "max_batch": 0}}},
                        ["12", "14"])
    batched, images = comfy_host.output(ex, "12", 0)["samples"], comfy_host.output(ex, "12", 1)
    carried, filled = comfy_host.output(ex, "14", 0), comfy_host.output(ex, "14", 1)
    keep = filled < 0.5
    assert torch.equal(images[keep], carried[keep]), "carried pixels are kept exactly"
    assert_equal_runs(batched, latents_of(comfy_host, graph, 1))
