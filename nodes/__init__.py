"""The pack's ComfyUI extension: its nodes on ComfyUI's own types (v3 schema, one entry point)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .common.folders import register_model_folders
from .flow.flow_propagate import FlowPropagate
from .flow.optical_flow import OpticalFlowSequence
from .propdpm.appearance import AppearanceAdapterEncode
from .propdpm.depth_sequence import DepthSequence
from .propdpm.loader import PropDPMLoader
from .propdpm.propagate import AutoregressivePropagate
from .refine.refine import FlowRefine

NODES: list[type[io.ComfyNode]] = [DepthSequence, AppearanceAdapterEncode, PropDPMLoader, AutoregressivePropagate,
                                   OpticalFlowSequence, FlowPropagate, FlowRefine]


class MagicPropExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> MagicPropExtension:
    register_model_folders()
    return MagicPropExtension()
