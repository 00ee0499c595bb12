"""MagicProp for ComfyUI: the entry point ComfyUI loads (custom_nodes/<this pack>)."""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
