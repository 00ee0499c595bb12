"""PropDPM as a ComfyUI model type: SD1.5-shaped UNet, 10-channel concat, v-prediction, zero terminal SNR.

The UNet sits at ``diffusion_model`` with an SD-style UNet config, so ComfyUI's LoRA key mapping and ControlNets
for SD1.5 apply to it unchanged. The 6 conditioning channels reach the model through ``concat_cond`` from a key
that AutoregressivePropagate puts into each conditioning dict, built by the core's ``condition_for``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import comfy.utils
import torch

from ...magicprop.errors import MagicPropError
from ...magicprop.log import get_logger
from ...magicprop.propdpm.checkpoint import load_checkpoint
from ...magicprop.propdpm.config import PropDPMConfig
from ...magicprop.propdpm.unet_config import UnsupportedUNet, comfy_unet_config

log = get_logger(__name__)

CONCAT_KEY = "magicprop_concat"
"""Conditioning-dict key holding a frame's (1, 6, h, w) spatial condition, set per frame by the propagation node."""

WEIGHT_DTYPES = {"default": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# diffusers beta schedule name -> ComfyUI's name for the same betas
_BETA_SCHEDULES = {"scaled_linear": "linear", "linear": "sqrt_linear"}


class PropDPMModel(comfy.model_base.BaseModel):
    """BaseModel whose concatenated input is the frame's spatial condition (MagicProp section 3.2)."""

    def concat_cond(self, **kwargs):
        cond = kwargs.get(CONCAT_KEY)
        if cond is None:
            raise MagicPropError(
                "PropDPM was sampled without its frame conditions (previous frame and depth): sample it with the "
                "AutoregressivePropagate node, not with KSampler."
            )
        noise = kwargs["noise"]
        return comfy.utils.resize_to_batch_size(cond, noise.shape[0]).to(kwargs["device"])


class PropDPMModelConfig(comfy.supported_models.SD15):
    """SD15's model config with PropDPM's schedule, prediction type and latent scale, from the checkpoint."""

    unet_extra_config = {}  # the head count comes from the checkpoint's own config, never SD15's default

    def __init__(self, unet_config: dict, meta: PropDPMConfig) -> None:
        super().__init__(unet_config)
        sched = meta.schedule
        if sched.beta_schedule not in _BETA_SCHEDULES or sched.prediction_type != "v_prediction":
            raise MagicPropError(
                f"checkpoint schedule {sched.beta_schedule!r} / {sched.prediction_type!r}: this node supports "
                f"{sorted(_BETA_SCHEDULES)} betas with v_prediction."
            )
        self.sampling_settings = {
            "beta_schedule": _BETA_SCHEDULES[sched.beta_schedule],
            "linear_start": sched.beta_start,
            "linear_end": sched.beta_end,
            "timesteps": sched.num_train_timesteps,
            "zsnr": sched.zero_terminal_snr,
        }
        self.latent_format = comfy.latent_formats.SD15(scale_factor=meta.latent_scale)
        self.magicprop = meta

    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.V_PREDICTION

    def inpaint_model(self):
        return False

    def get_model(self, state_dict, prefix="", device=None):
        return PropDPMModel(self, model_type=self.model_type(state_dict, prefix), device=device)


@dataclass
class AdapterHandle:
    """The appearance adapter of a PropDPM checkpoint, in a ModelPatcher, with the checkpoint's metadata."""

    patcher: comfy.model_patcher.ModelPatcher
    config: PropDPMConfig
    name: str


def load_propdpm(path: str | Path, weight_dtype: str = "default"):
    """(ModelPatcher of PropDPM, AdapterHandle) from a PropDPM checkpoint; refuses anything else clearly."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise MagicPropError(f"weight_dtype={weight_dtype!r}: expected one of {list(WEIGHT_DTYPES)}.")
    ckpt = load_checkpoint(path)
    name = Path(path).name
    try:
        unet_config = comfy_unet_config(ckpt.config.unet_config)
    except UnsupportedUNet as e:
        raise MagicPropError(f"{name}: its UNet is not SD1.x-shaped ({e}); ComfyUI cannot run it.") from None
    key_map = comfy.utils.unet_to_diffusers(unet_config)
    missing = sorted(set(ckpt.unet_state) - set(key_map))
    if missing:
        raise MagicPropError(f"{name}: UNet tensors {missing[:3]} have no ComfyUI name: the file is inconsistent.")
    sd = {key_map[k]: v for k, v in ckpt.unet_state.items()}

    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    model_config = PropDPMModelConfig(unet_config, ckpt.config)
    dtype = WEIGHT_DTYPES[weight_dtype]
    if dtype is None:
        dtype = comfy.model_management.unet_dtype(
            model_params=comfy.utils.calculate_parameters(sd), supported_dtypes=model_config.supported_inference_dtypes,
            weight_dtype=comfy.utils.weight_dtype(sd),
        )
    manual_cast = comfy.model_management.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model(sd, "").to(offload_device)
    model.diffusion_model.load_state_dict(sd, strict=True)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)

    # the adapter is small: it runs in fp32 whatever the UNet's dtype, its tokens are cast by the UNet
    adapter = ckpt.build_adapter().eval().requires_grad_(False).to(offload_device)
    adapter_patcher = comfy.model_patcher.ModelPatcher(adapter, load_device=load_device, offload_device=offload_device)
    log.info("PropDPM %s loaded (%s, UNet %s)", name, dtype, unet_config["model_channels"])
    return patcher, AdapterHandle(adapter_patcher, ckpt.config, name)
