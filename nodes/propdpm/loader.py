"""PropDPMLoader: a PropDPM checkpoint from models/magicprop -> MODEL + appearance adapter."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..common.folders import PROPDPM_FOLDER, propdpm_files
from ..common.types import Adapter
from .model import WEIGHT_DTYPES, load_propdpm


class PropDPMLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PropDPMLoader",
            display_name="Load PropDPM (MagicProp)",
            category="MagicProp",
            description="Loads a PropDPM checkpoint: the propagation UNet as a MODEL (LoRAs apply to it) and its "
                        "appearance adapter.",
            inputs=[
                io.Combo.Input("checkpoint", options=propdpm_files(),
                               tooltip="A PropDPM .safetensors file from models/magicprop (made by the MagicProp "
                                       "trainer; plain Stable Diffusion checkpoints are refused)."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Precision of the UNet weights; default picks what the device runs best."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="PropDPM, to sample with AutoregressivePropagate."),
                Adapter.Output(display_name="ADAPTER", tooltip="The appearance adapter, for AppearanceAdapterEncode."),
            ],
        )

    @classmethod
    def execute(cls, checkpoint: str, weight_dtype: str) -> io.NodeOutput:
        model, adapter = load_propdpm(folder_paths.get_full_path_or_raise(PROPDPM_FOLDER, checkpoint), weight_dtype)
        return io.NodeOutput(model, adapter)
