"""The PropDPM checkpoint: one .safetensors file, never pickle (README, "Checkpoint format").

Layout: ``unet.<key>`` tensors in diffusers' UNet2DConditionModel layout, ``adapter.<key>`` tensors of the
appearance adapter, and string metadata ``format`` = "magicprop.propdpm" plus ``magicprop`` = the JSON of
``PropDPMConfig``. Writes are atomic. The loader validates the file before reading any tensor and says what a
refused file is (a plain SD1.5 checkpoint, a pickle, a truncated download ...).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io.fileio import SNIFF_BYTES, atomic_path, sniff
from .adapter import AppearanceAdapter
from .config import FORMAT_NAME, PropDPMConfig
from .unet import check_propdpm_unet_config

UNET_PREFIX = "unet."
ADAPTER_PREFIX = "adapter."


@dataclass
class PropDPMCheckpoint:
    """A loaded checkpoint: its metadata and its two state dicts (diffusers UNet layout, adapter)."""

    config: PropDPMConfig
    unet_state: dict[str, torch.Tensor]
    adapter_state: dict[str, torch.Tensor]

    def build_unet(self, dtype: torch.dtype | None = None):
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_config(self.config.unet_config)
        unet.load_state_dict(self.unet_state, strict=True)
        return unet.to(dtype) if dtype is not None and dtype != torch.float32 else unet

    def build_adapter(self, dtype: torch.dtype | None = None) -> AppearanceAdapter:
        adapter = AppearanceAdapter(self.config.adapter)
        adapter.load_state_dict(self.adapter_state, strict=True)
        return adapter.to(dtype) if dtype is not None else adapter


def save_checkpoint(path: str | Path, config: PropDPMConfig, unet, adapter: AppearanceAdapter) -> Path:
    """Write a PropDPM checkpoint atomically; returns its path."""
    from safetensors.torch import save_file

    check_propdpm_unet_config(dict(config.unet_config), "config.unet_config", config.inputs)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in ((UNET_PREFIX, unet), (ADAPTER_PREFIX, adapter)):
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().to("cpu").contiguous()
    metadata = {"format": FORMAT_NAME, "magicprop": config.to_json()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


# -- inspection ---------------------------------------------------------------------------------------------------

def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header without loading tensors; CheckpointError says what the file is otherwise."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
    if not (0 < n <= size - 8 and head[8:9] == b"{"):  # not a safetensors header: say what the file is instead
        kind = sniff(head)
        if kind is not None and ("pickle" in kind or "PyTorch" in kind):
            raise CheckpointError(
                f"{path.name} is {kind}, not safetensors: PropDPM checkpoints are safetensors only, because "
                "unpickling can run arbitrary code. Use a .safetensors PropDPM checkpoint (the trainer and "
                "`python -m magicprop init` write them)."
            )
        if kind is not None:
            raise CheckpointError(
                f"{path.name} is {kind}, not a PropDPM checkpoint: expected a .safetensors file written by the "
                "MagicProp trainer or `python -m magicprop init`."
            )
        if len(head) < 8:
            raise CheckpointError(
                f"{path.name} is {size} bytes long: too short for a safetensors file (empty or truncated)."
            )
        if n > size - 8:
            raise CheckpointError(
                f"{path.name} is truncated or not a safetensors file: its header claims {n} bytes but the file has "
                f"{size} bytes. Download or copy it again."
            )
        raise CheckpointError(f"{path.name} is not a safetensors file (no JSON header).")
    with open(path, "rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path.name} is not a safetensors file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} is not a safetensors file (its header is not a JSON object).")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise CheckpointError(
            f"{path.name} is truncated: its header describes {8 + n + end} bytes but the file has {size} bytes. "
            "Download or copy it again."
        )
    return header


def _describe_foreign(path: Path, header: dict[str, Any]) -> str:
    """Name what a safetensors file without MagicProp metadata most likely is."""
    def in_channels(key: str) -> int | None:
        entry = header.get(key)
        return entry["shape"][1] if entry else None

    for key, layout in (("model.diffusion_model.input_blocks.0.0.weight", "original Stable Diffusion"),
                        ("input_blocks.0.0.weight", "original Stable Diffusion UNet-only"),
                        ("conv_in.weight", "diffusers UNet")):
        c = in_channels(key)
        if c == 4:
            return (f"{path.name} is a plain Stable Diffusion checkpoint ({layout} layout, 4 input channels), not a "
                    "PropDPM: train or convert a PropDPM first (`python -m magicprop init --unet <this file>` makes "
                    "an untrained one; the trainer makes a useful one).")
        if c == 9:
            return (f"{path.name} is a Stable Diffusion inpainting checkpoint ({layout} layout, 9 input channels), "
                    "not a PropDPM.")
        if c is not None:
            return (f"{path.name} holds a UNet with {c} input channels ({layout} layout) but no MagicProp metadata; "
                    "PropDPM files are written by the MagicProp trainer or `python -m magicprop init`.")
    n = sum(1 for k in header if k != "__metadata__")
    return (f"{path.name} is a safetensors file with {n} tensors but no MagicProp metadata (format="
            f"{header.get('__metadata__', {}).get('format')!r}): not a PropDPM checkpoint.")


def inspect_checkpoint(path: str | Path) -> PropDPMConfig:
    """Validate a file as a PropDPM checkpoint from its header alone and return its metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass the path of a PropDPM .safetensors file.")
    header = read_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT_NAME or "magicprop" not in meta:
        raise CheckpointError(_describe_foreign(path, header))
    config = PropDPMConfig.from_json(meta["magicprop"])
    check_propdpm_unet_config(config.unet_config, f"{path.name}'s unet_config", config.inputs)
    if not any(k.startswith(ADAPTER_PREFIX) for k in header):
        raise CheckpointError(f"{path.name} has PropDPM metadata but no adapter weights: the file is incomplete.")
    return config


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> PropDPMCheckpoint:
    """Validate and load a PropDPM checkpoint (tensors on `device`, dtype as stored)."""
    from safetensors.torch import load_file

    config = inspect_checkpoint(path)
    tensors = load_file(str(path), device=str(device))
    unet = {k[len(UNET_PREFIX):]: v for k, v in tensors.items() if k.startswith(UNET_PREFIX)}
    adapter = {k[len(ADAPTER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ADAPTER_PREFIX)}
    conv_in = unet.get("conv_in.weight")
    if conv_in is None or conv_in.shape[1] != config.unet_config["in_channels"]:
        raise CheckpointError(
            f"{Path(path).name}: conv_in has shape {None if conv_in is None else tuple(conv_in.shape)}, which does "
            f"not match its metadata (in_channels={config.unet_config['in_channels']}): the file is inconsistent."
        )
    return PropDPMCheckpoint(config=config, unet_state=unet, adapter_state=adapter)


def convert_checkpoint(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Copy a PropDPM checkpoint with its floating-point weights cast to `dtype` (e.g. fp16 to ship it)."""
    ckpt = load_checkpoint(src)
    unet = ckpt.build_unet()
    adapter = ckpt.build_adapter()
    return save_checkpoint(dst, ckpt.config, unet.to(dtype), adapter.to(dtype))
