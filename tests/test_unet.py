"""PropDPM's UNet is SD1.5's with 6 zero-initialised extra input channels (MagicProp section 3.2)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from magicprop.errors import MagicPropError
from magicprop.propdpm.unet import load_sd15_unet, widen_to_propdpm
from magicprop.propdpm.unet_config import comfy_unet_config
from magicprop.tiny import TINY_UNET_CONFIG, tiny_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_widened_unet_equals_source_unet():
    sd = tiny_unet(seed=0)
    prop = widen_to_propdpm(sd).eval()
    assert prop.config.in_channels == 10 and prop.conv_in.weight.shape[1] == 10
    assert torch.count_nonzero(prop.conv_in.weight[:, 4:]) == 0
    torch.manual_seed(1)
    x, cond = torch.randn(2, 4, 16, 16), torch.randn(2, 6, 16, 16) * 3
    ctx = torch.randn(2, 9, TINY_UNET_CONFIG["cross_attention_dim"])
    t = torch.tensor([999, 10])
    with torch.no_grad():
        ref = sd(x, t, encoder_hidden_states=ctx).sample
        out = prop(torch.cat([x, cond], 1), t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # and the new channels are live parameters: changing them changes the output
    with torch.no_grad():
        prop.conv_in.weight[:, 4:].normal_()
        assert (prop(torch.cat([x, cond], 1), t, encoder_hidden_states=ctx).sample - ref).abs().max() > 1e-3


def test_widen_refuses_non_sd_unets():
    with pytest.raises(MagicPropError, match="plain Stable Diffusion"):
        widen_to_propdpm(tiny_unet(in_channels=9))


def test_diffusers_folder_loads(tmp_path):
    sd = tiny_unet(seed=3)
    sd.save_pretrained(tmp_path / "pipe" / "unet")
    loaded = load_sd15_unet(tmp_path / "pipe")
    for k, v in sd.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(MagicPropError, match="without config.json"):
        load_sd15_unet(tmp_path)


def _ldm_checkpoint(unet, comfy_path) -> dict[str, torch.Tensor]:
    """The original Stable Diffusion single-file layout of a diffusers UNet, mapped by ComfyUI's own converter."""
    import comfy.utils

    key_map = comfy.utils.unet_to_diffusers(comfy_unet_config(dict(unet.config)))
    state = unet.state_dict()
    assert set(state) <= set(key_map), "every UNet tensor must have an original-layout name"
    return {"model.diffusion_model." + key_map[k]: v.clone() for k, v in state.items()}


def test_single_file_sd15_loads_offline(tmp_path, comfy_path):
    """A local single-file (original layout) checkpoint loads through diffusers' converter with HF_HUB_OFFLINE=1."""
    from safetensors.torch import save_file

    sd = tiny_unet(seed=4)
    save_file(_ldm_checkpoint(sd, comfy_path), str(tmp_path / "tiny-sd15.safetensors"))
    sd.save_config(tmp_path / "config" / "unet")  # the tiny model's diffusers config, as the package ships SD1.5's
    probe = (
        "import sys, torch; from magicprop.propdpm.unet import load_sd15_unet; "
        "u = load_sd15_unet(sys.argv[1], sys.argv[2]); torch.save(u.state_dict(), sys.argv[3])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "tiny-sd15.safetensors"), str(tmp_path / "config"),
         str(tmp_path / "out.pt")], check=True, env=env, cwd=tmp_path,
    )
    loaded = torch.load(tmp_path / "out.pt")
    for k, v in sd.state_dict().items():
        assert torch.equal(loaded[k], v), k


def test_shipped_sd15_config_is_sd15():
    import json

    from magicprop.propdpm.unet import SD15_CONFIG_DIR

    cfg = json.loads((SD15_CONFIG_DIR / "unet" / "config.json").read_text())
    assert cfg["block_out_channels"] == [320, 640, 1280, 1280] and cfg["cross_attention_dim"] == 768
    assert cfg["in_channels"] == 4 and cfg["attention_head_dim"] == 8
