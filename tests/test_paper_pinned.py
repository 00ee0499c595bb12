"""The paper's 10-channel PropDPM keeps giving the latents it gave before motion inputs existed.

tests/fixtures/paper-10ch-v1/latents.safetensors was written by `make_fixture` below at commit "paper-10ch fixture"
(the commit before the flow-guided layout): the shipped `propdpm-main` (the paper's input layout) propagates a held-out
synthetic clip from a reference in mid-clip, both chains, 4 steps. Any later change to how the 10 channels are built,
scaled or fed must leave these latents unchanged (1e-4: float32 sums differ between CPUs and BLAS builds by about
1e-5, CI measured 1.2e-5; a change to the conditioning moves them by orders of magnitude more).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from magicprop.benchmarks.models import MAIN, MODELS_DIR, load_models
from magicprop.propdpm.run import propagate_images
from magicprop.synthetic import SceneConfig, make_clip

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "paper-10ch-v1" / "latents.safetensors"
CLIP_SEED, REFERENCE, STEPS, SEED = 4_000_310, 3, 4, 7


def pinned_run() -> dict[str, torch.Tensor]:
    """The run the fixture records: the latent of every frame (the reference's is its encoding)."""
    pair = make_clip(CLIP_SEED, SceneConfig(size=128, frames=8))
    models = load_models(MODELS_DIR, [MAIN])[MAIN]
    latents = []

    def keep(k: int, latent: torch.Tensor) -> None:
        latents.append((k, latent[0].float().clone()))

    ref = pair.edit.frames[REFERENCE : REFERENCE + 1]
    propagate_images(models, ref, pair.source.depth, REFERENCE, steps=STEPS, seed=SEED, callback=keep)
    assert [k for k, _ in sorted(latents, key=lambda kv: kv[0])] == list(range(8))
    return {"latents": torch.stack([lat for _, lat in sorted(latents, key=lambda kv: kv[0])]).contiguous()}


def make_fixture(path: Path = FIXTURE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(pinned_run(), str(path), metadata={"clip_seed": str(CLIP_SEED), "reference": str(REFERENCE),
                                                  "steps": str(STEPS), "seed": str(SEED), "model": MAIN})


def test_paper_checkpoint_gives_the_pinned_latents():
    want = load_file(str(FIXTURE))
    got = pinned_run()
    assert got["latents"].shape == want["latents"].shape == (8, 4, 16, 16)
    assert torch.allclose(got["latents"], want["latents"], atol=1e-4, rtol=0), \
        float((got["latents"] - want["latents"]).abs().max())


if __name__ == "__main__":
    make_fixture()
