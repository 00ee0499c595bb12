"""The FlowRefine node: carried frames refined with an image model on ComfyUI's samplers."""
