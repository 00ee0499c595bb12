"""Path 3, PropDPM: the model (UNet, appearance adapter, CLIP, conditioning, config, checkpoint, schedule, depth),
the autoregressive loop (loop.py), a whole run (run.py) and the diffusers backend. Never imports ComfyUI."""
