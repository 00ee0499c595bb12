"""The pack's ComfyUI extension: its nodes on ComfyUI's own types (v3 schema, one entry point)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .appearance import AppearanceAdapterEncode
from .depth_sequence import DepthSequence
from .flow import OpticalFlowSequence
from .flow_propagate import FlowPropagate
from .folders import register_model_folders
from .loader import PropDPMLoader
from .propagate import AutoregressivePropagate
from .refine import FlowRefine

NODES: list[type[io.ComfyNode]] = [DepthSequence, AppearanceAdapterEncode, PropDPMLoader, AutoregressivePropagate,
                                   OpticalFlowSequence, FlowPropagate, FlowRefine]


class MagicPropExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> MagicPropExtension:
    register_model_folders()
    return MagicPropExtension()
