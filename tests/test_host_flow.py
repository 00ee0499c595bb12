"""OpticalFlowSequence and FlowPropagate in the real ComfyUI: video in, the edit carried along the flow, video out;
controlnet_aux's OPTICAL_FLOW accepted; wrong flow refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from host import GraphError, progress_hook

pytestmark = pytest.mark.host

K, REF, WIDTH, HEIGHT = 6, 2, 128, 64


class TestOpticalFlowTensor:
    """Stands in for controlnet_aux's Unimatch node: (K-1, H, W, 2) float flow in pixels (x, y) between consecutive
    frames, forward unless `backward` (its backward_flow option), from OpenCV's DIS at the frames' size."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "backward": ("BOOLEAN", {"default": False}),
                             "drop_last": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("OPTICAL_FLOW",)
    FUNCTION = "estimate"
    CATEGORY = "testing"

    def estimate(self, image, backward, drop_last):
        import cv2
        import numpy as np

        grey = [cv2.cvtColor(np.asarray(f * 255, dtype=np.uint8), cv2.COLOR_RGB2GRAY) for f in image]
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        pairs = [(grey[i + 1], grey[i]) if backward else (grey[i], grey[i + 1]) for i in range(len(grey) - 1)]
        flows = torch.stack([torch.from_numpy(dis.calc(a, b, None)) for a, b in pairs])
        return (flows[:-1] if drop_last else flows,)


@pytest.fixture(scope="module")
def host(comfy_host, bikes):
    import shutil

    import folder_paths

    comfy_host.nodes.NODE_CLASS_MAPPINGS["TestOpticalFlowTensor"] = TestOpticalFlowTensor
    shutil.copy(bikes, Path(folder_paths.get_input_directory()) / "bikes.mp4")
    return comfy_host


def flow_graph(external: dict | None = None) -> dict:
    """LoadVideo -> frames -> OpticalFlowSequence (or an OPTICAL_FLOW node) -> FlowPropagate -> CreateVideo ->
    SaveVideo; the reference is frame REF inverted; node "7" is FlowPropagate."""
    graph = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "bikes.mp4"}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 0, "length": K}},
        "4": {"class_type": "ImageScale", "inputs": {"image": ["3", 0], "upscale_method": "area", "width": WIDTH,
                                                     "height": HEIGHT, "crop": "center"}},
        "5": {"class_type": "ImageFromBatch", "inputs": {"image": ["4", 0], "batch_index": REF, "length": 1}},
        "6": {"class_type": "ImageInvert", "inputs": {"image": ["5", 0]}},
        "7": {"class_type": "FlowPropagate", "inputs": {"frames": ["4", 0], "reference": ["6", 0],
                                                        "reference_index": REF, "strategy": "accumulate"}},
        "8": {"class_type": "CreateVideo", "inputs": {"images": ["7", 0], "fps": ["2", 2], "audio": ["2", 1]}},
        "9": {"class_type": "SaveVideo", "inputs": {"video": ["8", 0], "filename_prefix": "flow/test",
                                                    "format": "auto", "codec": "auto"}},
    }
    if external is None:
        graph["10"] = {"class_type": "OpticalFlowSequence", "inputs": {
            "frames": ["4", 0], "estimator": "dis", "dis_preset": "medium", "raft_weights": "none",
            "work_size": 512, "batch_size": 4}}
        graph["7"]["inputs"]["flow"] = ["10", 0]
    else:
        graph["10"] = {"class_type": "TestOpticalFlowTensor", "inputs": {"image": ["4", 0], **external}}
        graph["7"]["inputs"].update(external_flow=["10", 0],
                                    flow_direction="backward" if external.get("backward") else "forward")
    return graph


def test_video_to_flow_propagation_to_video(host):
    import folder_paths

    from magicprop.io.video import probe
    from magicprop.motion.propagate import flow_propagate

    out_dir = Path(folder_paths.get_output_directory())
    before = set(out_dir.rglob("*.mp4"))
    executor = host.run(flow_graph())
    written = set(out_dir.rglob("*.mp4")) - before
    assert len(written) == 1
    info = probe(written.pop())
    assert (info.frames, info.width, info.height) == (K, WIDTH, HEIGHT)

    frames, reference = host.output(executor, "4"), host.output(executor, "6")
    motion, preview = host.output(executor, "10", 0), host.output(executor, "10", 1)
    images, filled = host.output(executor, "7", 0), host.output(executor, "7", 1)
    assert len(motion) == K - 1 and tuple(motion.frame_size) == (HEIGHT, WIDTH)
    assert motion.forward.dtype == torch.float16 and motion.forward.device.type == "cpu"
    assert motion.settings["estimator"] == "dis" and motion.settings["preset"] == "medium"
    assert preview.shape == (K - 1, HEIGHT, WIDTH, 3) and preview.min() >= 0 and preview.max() <= 1
    assert images.shape == (K, HEIGHT, WIDTH, 3) and filled.shape == (K, HEIGHT, WIDTH)
    assert torch.allclose(images[REF], reference[0], atol=1e-6)  # the edited frame itself is kept
    core = flow_propagate(frames, reference, [REF], None, motion=motion, strategy="accumulate", window=8)
    # the node is the core (equal alone; within float reordering after other tests changed torch's thread settings)
    assert (images - core.frames).abs().max() < 0.5 / 255 and (filled - core.filled.float()).abs().max() < 1e-3


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_controlnet_aux_optical_flow_is_accepted(host, backward, caplog):
    graph = flow_graph({"backward": backward, "drop_last": False})
    graph["7"]["inputs"]["strategy"] = "mixed"  # needs flow to the keyframe, which external flow cannot give
    with caplog.at_level("WARNING"):
        executor = host.run(graph)
    assert any("cannot be extended to the keyframes" in r.getMessage() and "'accumulate'" in r.getMessage()
               for r in caplog.records)
    images = host.output(executor, "7", 0)
    frames, reference = host.output(executor, "4"), host.output(executor, "6")
    assert images.shape == (K, HEIGHT, WIDTH, 3)
    # the edit (colours inverted) is carried: every frame is much closer to the inverted source than to the source
    for k in range(K):
        assert (images[k] - (1 - frames[k])).abs().mean() < 0.5 * (images[k] - frames[k]).abs().mean()
    assert torch.allclose(images[REF], reference[0], atol=1e-6)


def test_optical_flow_of_the_wrong_shape_is_refused_in_one_line(host):
    with pytest.raises(GraphError) as e:
        host.run(flow_graph({"backward": False, "drop_last": True}))
    message = e.value.message
    assert "\n" not in message.strip()
    assert "external_flow" in message and f"({K - 1}, {HEIGHT}, {WIDTH}, 2)" in message and f"({K - 2}," in message


def test_raft_from_models_folder_is_recorded_and_reused(host):
    """RAFT (torchvision raft_small, seeded random weights: plumbing only) from models/optical_flow: the flow records
    the file, and FlowPropagate's direct strategy re-estimates flow to the keyframe with the same file."""
    import folder_paths
    from safetensors.torch import save_file
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    folder = host.models / "optical_flow"
    folder.mkdir(exist_ok=True)
    paths, extensions = folder_paths.folder_names_and_paths["optical_flow"]  # registered by the pack
    if str(folder) not in paths:
        folder_paths.folder_names_and_paths["optical_flow"] = ([str(folder), *paths], extensions)
    save_file(raft_small(weights=None).state_dict(), str(folder / "raft-small-test.safetensors"))
    graph = flow_graph()
    graph["10"]["inputs"].update(estimator="raft", raft_weights="raft-small-test.safetensors", work_size=64)
    graph["7"]["inputs"]["strategy"] = "direct"
    executor = host.run(graph)
    motion = host.output(executor, "10", 0)
    assert motion.settings["estimator"] == "raft" and motion.settings["weights"] == "raft-small-test.safetensors"
    assert len(motion.settings["weights_sha256"]) == 16 and motion.work_size == (32, 64)
    assert host.output(executor, "7", 0).shape == (K, HEIGHT, WIDTH, 3)

    graph["10"]["inputs"]["raft_weights"] = "none"  # refused before anything runs (test_host_validate.py)
    with pytest.raises(GraphError) as e:
        host.run(graph)
    assert e.value.exception_type == "validation" and "raft_weights is 'none'" in e.value.message


def test_flow_of_other_frames_is_refused_in_one_line(host):
    graph = flow_graph()
    graph["11"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["4", 0], "batch_index": 0, "length": K - 1}}
    graph["7"]["inputs"]["frames"] = ["11", 0]  # flow of K frames, propagation over K-1
    with pytest.raises(GraphError) as e:
        host.run(graph)
    message = e.value.message.strip()
    assert "\n" not in message and message.startswith(f"flow was estimated from {K} frames")
    assert "connect the same frames to OpticalFlowSequence and FlowPropagate" in message


def test_mask_keeps_the_source_outside(host):
    graph = flow_graph()
    graph["7"]["inputs"]["mask"] = _box_mask(graph, 1.0)
    executor = host.run(graph)
    images, filled, frames = host.output(executor, "7", 0), host.output(executor, "7", 1), host.output(executor, "4")
    outside = host.output(executor, "14")[0] == 0
    assert torch.equal(images[:, outside], frames[:, outside]) and not filled[:, outside].any()
    assert (images[:, ~outside] - frames[:, ~outside]).abs().mean() > 0.2  # inverted colours inside


def _box_mask(graph: dict, value_in: float) -> list:
    """A mask node in `graph`: `value_in` in a 48x32 box at (16, 16), the other value outside."""
    graph["12"] = {"class_type": "SolidMask", "inputs": {"value": 1.0 - value_in, "width": WIDTH, "height": HEIGHT}}
    graph["13"] = {"class_type": "SolidMask", "inputs": {"value": value_in, "width": 48, "height": 32}}
    graph["14"] = {"class_type": "MaskComposite", "inputs": {"destination": ["12", 0], "source": ["13", 0],
                                                             "x": 16, "y": 16, "operation": "add" if value_in else
                                                             "multiply"}}
    return ["14", 0]


def test_a_paint_layer_with_alpha_is_laid_over_its_frame(host):
    """An RGBA reference (JoinImageWithAlpha: the inverted frame, opaque in a box only) edits only what it covers:
    the rest of the keyframe is the source frame, and the box's edit is carried. Before, the layer's RGB under its
    transparent pixels (anything) was carried as the edit."""
    graph = flow_graph()
    graph["15"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["6", 0], "alpha": _box_mask(graph, 0.0)}}
    graph["7"]["inputs"]["reference"] = ["15", 0]
    executor = host.run(graph)
    images, frames = host.output(executor, "7", 0), host.output(executor, "4")
    inside = host.output(executor, "14")[0] == 0  # (the mask given to JoinImageWithAlpha is 1 - alpha)
    torch.testing.assert_close(images[REF, ~inside], frames[REF, ~inside], rtol=0, atol=1e-6)
    torch.testing.assert_close(images[REF, inside], 1 - frames[REF, inside], rtol=0, atol=1e-6)
    assert (images[:, ~inside] - frames[:, ~inside]).abs().mean() < 0.05
    assert (images[:, inside] - frames[:, inside]).abs().mean() > 0.2


def test_the_empty_mask_of_an_image_without_alpha_is_explained(host):
    """LoadImage gives an empty 64x64 mask for an image without alpha: the refusal says so (not 'resize the mask')."""
    graph = flow_graph()
    graph["12"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    graph["7"]["inputs"]["mask"] = ["12", 0]
    with pytest.raises(GraphError) as e:
        host.run(graph)
    assert e.value.message.strip().startswith("mask is an empty 64x64 mask, what LoadImage gives for an image without")


def test_depth_maps_at_a_preprocessors_resolution_are_fitted_to_the_frames(host):
    """Depth maps of the frames' shape at another resolution (a preprocessor's `resolution`) are resized to the
    frames' size; another shape is refused naming both."""
    graph = {n: node for n, node in flow_graph().items() if n in ("1", "2", "3", "4")}
    graph["20"] = {"class_type": "ImageScale", "inputs": {
        "image": ["4", 0], "upscale_method": "area", "width": WIDTH // 2, "height": HEIGHT // 2, "crop": "disabled"}}
    graph["21"] = {"class_type": "DepthSequence", "inputs": {"frames": ["4", 0], "depth_model": "none",
                                                             "batch_size": 8, "depth_images": ["20", 0]}}
    depth = host.output(host.run(graph, ["21"]), "21")
    assert depth.shape == (K, HEIGHT, WIDTH, 3) and torch.isfinite(depth).all()
    graph["20"]["inputs"].update(width=WIDTH // 2, height=WIDTH // 2)  # square maps for 2:1 frames
    with pytest.raises(GraphError) as e:
        host.run(graph, ["21"])
    assert e.value.message.strip().startswith(f"depth_images has shape ({K}, {WIDTH // 2}, {WIDTH // 2}) but frames "
                                              f"has ({K}, {HEIGHT}, {WIDTH})")


def test_progress_steps_through_a_gaps_first_chain_and_a_cancel_there_stops_the_run(host):
    """Two keyframes (0 and K-1): every frame between them is carried by both chains, the second finishing what the
    first left waiting; ComfyUI's progress bar counts each chain's frames, so it moves (and the user's cancel is
    honoured) while the first chain runs, before any frame between the keyframes is finished."""
    import nodes

    graph = flow_graph()
    graph["11"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["4", 0], "batch_index": K - 1, "length": 1}}
    graph["5"]["inputs"]["batch_index"] = 0
    graph["12"] = {"class_type": "ImageInvert", "inputs": {"image": ["11", 0]}}
    graph["13"] = {"class_type": "ImageBatch", "inputs": {"image1": ["6", 0], "image2": ["12", 0]}}
    graph["7"]["inputs"].update(reference=["13", 0], keyframe_indices=f"0, {K - 1}")
    total = 2 + 2 * (K - 2) + 2  # the keyframes; each frame between them once for each chain, which ends on the other
    events = []

    def record(value, steps, preview, **kw):
        if steps == total:
            events.append(value)

    with progress_hook(record):
        host.run(graph, ["7"])
    assert events == list(range(1, total + 1))

    def cancel_in_first_chain(value, steps, preview, **kw):
        record(value, steps, preview)
        if steps == total and value == 4:  # the keyframes and two frames of the first chain: nothing else finished
            nodes.interrupt_processing(True)

    events.clear()
    with progress_hook(cancel_in_first_chain), pytest.raises(GraphError) as err:
        host.run(graph, ["7"])
    assert err.value.exception_type == "interrupted" and events == [1, 2, 3, 4]
