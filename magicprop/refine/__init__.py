"""Path 2, FlowRefine: refine carried frames with an image model (core.py: the per_frame and loopback loops)."""
