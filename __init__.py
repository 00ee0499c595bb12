"""MagicProp for ComfyUI: the entry point ComfyUI loads (custom_nodes/<this pack>)."""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"  # the filmstrip on AutoregressivePropagate

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
