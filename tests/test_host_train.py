"""A checkpoint exported by the trainer loads in ComfyUI's PropDPMLoader and propagates."""

from __future__ import annotations

import shutil

import pytest
import torch
from graphs import propagation_graph
from test_host_graph import files  # noqa: F401  (the fixture)
from test_train import run_args

pytestmark = pytest.mark.host


def test_trained_checkpoint_runs_in_comfyui(comfy_host, files, tmp_path, tiny_models):  # noqa: F811
    from magicprop.train.config import load_config
    from magicprop.train.loop import train

    path = train(load_config(None, run_args(tiny_models, tmp_path / "run", steps=2)), progress=False)
    shutil.copy(path, comfy_host.models / "magicprop" / "trained.safetensors")
    graph = propagation_graph(files, frames=3, ref=1, steps=2)
    graph["6"]["inputs"]["checkpoint"] = "trained.safetensors"
    ex = comfy_host.run(graph, ["12"])
    latents, images = comfy_host.output(ex, "12", 0)["samples"], comfy_host.output(ex, "12", 1)
    assert latents.shape[0] == 3 and torch.isfinite(latents).all() and torch.isfinite(images).all()
