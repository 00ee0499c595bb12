"""The one place for the seed ranges of synthetic clips (magicprop.synthetic.make_clip): which clips train, which
validate, which are held out for the VAE, the demo and `bench quality`. The ranges are disjoint as long as a
training run draws fewer than VALIDATION_OFFSET clips and its `data.synthetic_seed` stays below VAE_SEED.

| range                                                  | clips of                                                    |
|--------------------------------------------------------|-------------------------------------------------------------|
| synthetic_seed .. synthetic_seed + synthetic_clips - 1 | PropDPM training (train.data.SyntheticSource; recipes: 0..) |
| synthetic_seed + VALIDATION_OFFSET                     | the trainer's periodic validation clip (train.validate)     |
| VAE_SEED + seed * VAE_RUN_STRIDE + i                   | the demo VAE's training frames (train.vae.frame_pool)       |
| DEMO_SEED + c                                          | the demo's held-out clips (c < 500)                         |
| QUALITY_SEED + c                                       | `bench quality`'s held-out clips                            |
| 4_000_000 and up                                       | tests that need a clip no model has seen                    |
"""

from __future__ import annotations

VALIDATION_OFFSET = 1_000_000
"""Added to a run's `data.synthetic_seed`: the validation clip lies beyond any training range."""
VAE_SEED = 2_000_000
"""First clip of the VAE trainer's frame pool: disjoint from PropDPM's training and validation clips."""
VAE_RUN_STRIDE = 100_000
"""Clips per VAE run seed: run `seed` draws from VAE_SEED + seed * VAE_RUN_STRIDE on."""
DEMO_SEED = 3_000_000
"""The demo's clips: far from training (0 ..), validation (1e6 ..) and VAE (2e6 ..) clips."""
QUALITY_SEED = DEMO_SEED + 500
"""`bench quality`'s clips: held out from training, validation, the VAE and the demo's first clips."""
