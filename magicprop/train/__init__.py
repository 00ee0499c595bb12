"""Training PropDPM: data preparation and the shard format, clip sources, deterministic triplets, the loop, export."""
