"""The PropDPM checkpoint format: safetensors + metadata, atomic writes, a loader that says what it refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from magicprop.errors import CheckpointError
from magicprop.propdpm.checkpoint import inspect_checkpoint, load_checkpoint, save_checkpoint
from magicprop.propdpm.config import PropDPMConfig
from magicprop.propdpm.init_model import initial_models
from magicprop.tiny import TINY_UNET_CONFIG, tiny_unet


@pytest.fixture()
def models():
    return initial_models(unet_config=dict(TINY_UNET_CONFIG), seed=7)


def _config(unet, adapter, **kw) -> PropDPMConfig:
    return PropDPMConfig(unet_config={k: v for k, v in dict(unet.config).items() if not k.startswith("_")},
                         adapter=adapter.config, **kw)


def test_round_trip_is_bit_exact(tmp_path, models):
    unet, adapter = models
    config = _config(unet, adapter, prev_noise_augmentation=0.1, training={"steps": 12})
    path = save_checkpoint(tmp_path / "p.safetensors", config, unet, adapter)
    ckpt = load_checkpoint(path)
    assert ckpt.config == config
    for module, state in ((unet, ckpt.unet_state), (adapter, ckpt.adapter_state)):
        ref = module.state_dict()
        assert set(ref) == set(state)
        for k, v in ref.items():
            assert torch.equal(v, state[k]) and v.dtype == state[k].dtype, k
    rebuilt = ckpt.build_unet()
    for k, v in unet.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v)
    assert list(tmp_path.iterdir()) == [path], "no temporary files left behind"


def test_metadata_holds_every_design_field(tmp_path, models):
    unet, adapter = models
    path = save_checkpoint(tmp_path / "p.safetensors", _config(unet, adapter), unet, adapter)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["magicprop"])
    for key in ("format_version", "unet_config", "adapter", "schedule", "latent_scale", "clip", "appearance_dropout",
                "null_tokens", "gap", "prev_noise_augmentation", "resolution", "depth"):
        assert key in meta, key
    assert meta["schedule"]["prediction_type"] == "v_prediction" and meta["schedule"]["zero_terminal_snr"] is True
    assert {"token_dim", "num_tokens", "fingerprint", "crop", "config"} <= set(meta["clip"])
    assert meta["clip"]["crop"] == "none"
    assert {"convention", "near", "normalisation", "model"} <= set(meta["depth"])
    assert 1 in meta["gap"]["gaps"] and 0 < meta["gap"]["backward"] < 1


def test_plain_sd_unet_is_refused(tmp_path):
    sd = tiny_unet()
    save_file(sd.state_dict(), str(tmp_path / "sd.safetensors"))
    with pytest.raises(CheckpointError, match="plain Stable Diffusion checkpoint.*diffusers UNet.*not a PropDPM"):
        inspect_checkpoint(tmp_path / "sd.safetensors")
    ldm = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}
    save_file(ldm, str(tmp_path / "ldm.safetensors"))
    with pytest.raises(CheckpointError, match="plain Stable Diffusion checkpoint.*original Stable Diffusion layout"):
        inspect_checkpoint(tmp_path / "ldm.safetensors")


def test_pickle_is_refused_without_unpickling(tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "p.safetensors")
    with pytest.raises(CheckpointError, match="pickle.*safetensors only"):
        load_checkpoint(tmp_path / "p.safetensors")
    import pickle

    (tmp_path / "raw.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path / "raw.safetensors")


def test_truncated_file_is_refused(tmp_path, models):
    unet, adapter = models
    path = save_checkpoint(tmp_path / "p.safetensors", _config(unet, adapter), unet, adapter)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "head.safetensors").write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "head.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_failed_write_keeps_previous_checkpoint(tmp_path, models, monkeypatch):
    unet, adapter = models
    path = save_checkpoint(tmp_path / "p.safetensors", _config(unet, adapter), unet, adapter)
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _config(unet, adapter), unet, adapter)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]
    inspect_checkpoint(path)


def test_newer_format_version_is_refused(tmp_path, models):
    unet, adapter = models
    config = _config(unet, adapter)
    text = json.loads(config.to_json())
    text["format_version"] = 99
    with pytest.raises(CheckpointError, match="Update MagicProp"):
        PropDPMConfig.from_json(json.dumps(text))


def test_header_length_that_looks_like_a_pickle_opcode_loads(tmp_path, models):
    """A safetensors header of 0x80 + 256k bytes starts with the byte pickles start with; it is still safetensors."""
    import struct

    unet, adapter = models
    path = save_checkpoint(tmp_path / "p.safetensors", _config(unet, adapter), unet, adapter)
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header)
    filler = (0x80 - (len(text) + len(', "padding": ""')) % 256) % 256
    header["__metadata__"]["padding"] = " " * filler
    text = json.dumps(header)
    assert len(text) % 256 == 0x80
    (tmp_path / "q.safetensors").write_bytes(struct.pack("<Q", len(text)) + text.encode() + data[8 + n :])
    assert (tmp_path / "q.safetensors").read_bytes()[0] == 0x80
    ckpt = load_checkpoint(tmp_path / "q.safetensors")
    assert torch.equal(ckpt.unet_state["conv_in.weight"], unet.state_dict()["conv_in.weight"])


@pytest.mark.parametrize("name, content, what", [
    ("edit.png", None, "is a PNG image, not a PropDPM checkpoint"),
    ("edit.jpg", None, "is a JPEG image, not a PropDPM checkpoint"),
    ("clip.mp4", None, "is an MP4/MOV video, not a PropDPM checkpoint"),
    ("model.safetensors", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 3\n", "Git LFS pointer"),
    ("page.safetensors", b"<!DOCTYPE html><html><body>Sign in</body></html>" + b" " * 64, "an HTML page"),
    ("config.safetensors", b'{\n  "in_channels": 10, "out_channels": 4, "block_out_channels": [32, 64]\n}\n',
     "a JSON text file"),
    ("weights.gguf", b"GGUF" + bytes(60), "a GGUF model file"),
    ("archive.zip", None, "is a zip archive, not a PropDPM checkpoint"),
])
def test_a_file_of_another_kind_is_named(tmp_path, name, content, what):
    """A PNG passed as the checkpoint is called a PNG (not a safetensors header claiming 7e17 bytes)."""
    import zipfile

    from magicprop.io.images import save_image

    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    elif name.endswith(".png"):
        save_image(path, torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0)))
    elif name.endswith(".jpg"):
        from PIL import Image

        Image.new("RGB", (16, 16), (200, 30, 30)).save(path, format="JPEG")
    elif name.endswith(".mp4"):
        from magicprop.io.stream import write_video

        write_video(path, torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0)), fps=25)
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "not weights")
    with pytest.raises(CheckpointError) as e:
        inspect_checkpoint(path)
    message = str(e.value)
    assert message.startswith(name) and what in message and "\n" not in message, message
    assert "header claims" not in message
