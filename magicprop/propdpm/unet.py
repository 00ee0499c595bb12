"""PropDPM's UNet: Stable Diffusion 1.5's latent UNet with a widened input (MagicProp section 3.2).

PropDPM is initialised from SD1.5. The spatial conditions are concatenated to the noisy latent, so conv_in goes
from 4 to 10 input channels (channel order in ``magicprop.propdpm.conditioning``). The new input channels start at zero,
so the initial PropDPM computes exactly what SD1.5 computes on the noisy latent. The appearance tokens replace the
text context through the existing cross-attention (768 wide for SD1.5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import MagicPropError
from .conditioning import CONDITION_CHANNELS, INPUTS, LATENT_CHANNELS, PAPER_INPUTS, check_inputs, input_channels

SD15_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "sd15"
"""A diffusers config of SD1.5 (unet/config.json) shipped with the package for single-file loading, offline."""

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def _unet_class():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel


def load_sd15_unet(
    source: str | Path, config_dir: str | Path | None = None, dtype: torch.dtype = torch.float32
):
    """Load an SD1.5 UNet (4 input channels) from a local diffusers folder or a local single-file checkpoint.

    A folder may be a whole pipeline (with unet/) or the UNet folder itself. A single file (the original
    Stable Diffusion layout) is converted by diffusers' own single-file loader with the config in `config_dir`
    (default: SD1.5's, shipped in the package); nothing is looked up online.
    """
    cls = _unet_class()
    path = Path(source)
    if path.is_dir():
        if (path / "unet" / "config.json").is_file():
            return cls.from_pretrained(path, subfolder="unet", local_files_only=True, dtype=dtype)
        if (path / "config.json").is_file():
            return cls.from_pretrained(path, local_files_only=True, dtype=dtype)
        raise MagicPropError(
            f"unet source {str(path)!r} is a folder without config.json or unet/config.json: expected a diffusers "
            "Stable Diffusion 1.5 folder (or its unet/ subfolder), or a single .safetensors checkpoint."
        )
    if path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        folder = Path(config_dir) if config_dir is not None else SD15_CONFIG_DIR
        return cls.from_single_file(
            str(path), config=str(folder), subfolder="unet", local_files_only=True, dtype=dtype
        )
    raise MagicPropError(
        f"unet source {str(path)!r} does not exist or is not a checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)}) or a "
        "diffusers folder; pass the path of a local Stable Diffusion 1.5 model."
    )


def unet_from_config(config: dict[str, Any], seed: int = 0, dtype: torch.dtype = torch.float32):
    """A UNet2DConditionModel with seeded random weights (tests, benchmarks, training from scratch)."""
    cls = _unet_class()
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = cls.from_config(config)
    return unet if dtype == torch.float32 else unet.to(dtype)


def widen_to_propdpm(unet):
    """A copy of an SD UNet whose conv_in takes 4 + 6 channels; the 6 new input channels are zero-initialised."""
    cls = _unet_class()
    cfg = dict(unet.config)
    if cfg["in_channels"] != LATENT_CHANNELS or cfg["out_channels"] != LATENT_CHANNELS:
        raise MagicPropError(
            f"unet has in_channels={cfg['in_channels']}, out_channels={cfg['out_channels']}: expected a plain "
            f"Stable Diffusion 1.x UNet with {LATENT_CHANNELS} in and out channels (not an inpainting or PropDPM UNet)."
        )
    cfg["in_channels"] = LATENT_CHANNELS + CONDITION_CHANNELS
    state = unet.state_dict()
    w = state["conv_in.weight"]  # (c_out, 4, 3, 3)
    state["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], CONDITION_CHANNELS, *w.shape[2:])], dim=1)
    widened = cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    widened.load_state_dict(state, strict=True)
    return widened if w.dtype == torch.float32 else widened.to(w.dtype)


def check_propdpm_unet_config(cfg: dict[str, Any], what: str = "unet config",
                              inputs: tuple[str, ...] = PAPER_INPUTS) -> None:
    """Refuse a UNet config that does not fit the declared inputs (paper: 10 in, 4 out)."""
    want_in = LATENT_CHANNELS + input_channels(inputs)
    if cfg.get("in_channels") != want_in or cfg.get("out_channels") != LATENT_CHANNELS:
        layout = ("noisy latent + previous latent + 2 depth maps" if tuple(inputs) == PAPER_INPUTS else
                  f"noisy latent + {' + '.join(inputs)}")
        raise MagicPropError(
            f"{what} has in_channels={cfg.get('in_channels')}, out_channels={cfg.get('out_channels')}: a PropDPM UNet "
            f"with inputs {list(inputs)} takes {want_in} input channels ({layout}) and predicts {LATENT_CHANNELS}. "
            "Make one with `python -m magicprop init` (or the trainer's init_from for a flow-guided layout)."
        )


def extend_inputs(unet, names):
    """A copy of a PropDPM UNet whose conv_in takes the inputs `names`; the channels it did not take yet start at zero.

    The UNet's current inputs must be a prefix of `names` (told by its in_channels), so a trained paper PropDPM
    extended to ``FLOW_GUIDED_INPUTS`` computes exactly what it computed before, whatever the new channels hold
    (the same zero initialisation as SD1.5 -> PropDPM, MagicProp section 3.2).
    """
    cls = _unet_class()
    names = check_inputs(names)
    cfg = dict(unet.config)
    have = cfg["in_channels"]
    prefixes = [LATENT_CHANNELS + sum(INPUTS[n].channels for n in names[:i]) for i in range(len(names) + 1)]
    if cfg["out_channels"] != LATENT_CHANNELS or have not in prefixes[len(PAPER_INPUTS):]:
        raise MagicPropError(
            f"unet has in_channels={have}, out_channels={cfg['out_channels']}: expected a PropDPM UNet whose inputs "
            f"are a prefix of {list(names)} (in_channels one of {prefixes[len(PAPER_INPUTS):]}); start from a paper "
            "PropDPM checkpoint."
        )
    want = prefixes[-1]
    if want == have:
        return unet
    cfg["in_channels"] = want
    state = unet.state_dict()
    w = state["conv_in.weight"]  # (c_out, have, 3, 3)
    state["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], want - have, *w.shape[2:])], dim=1)
    widened = cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    widened.load_state_dict(state, strict=True)
    return widened if w.dtype == torch.float32 else widened.to(w.dtype)
