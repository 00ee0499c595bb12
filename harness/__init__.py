"""The real ComfyUI host, in-process, with tiny stand-in models: shared by the host tests and the benchmarks.

Not part of the node pack or the core (`magicprop/` never imports ComfyUI); ComfyUI is found through COMFYUI_PATH.
"""
