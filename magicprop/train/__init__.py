"""Training PropDPM: data sources, deterministic triplet sampling, the accelerate training loop, export."""
