"""The PropDPM nodes: PropDPMLoader, AppearanceAdapterEncode, DepthSequence, AutoregressivePropagate, and the
model and sampler adapters they use (model.py, denoiser.py)."""
