"""The benchmarks that ship with the package: `python -m magicprop demo` and `python -m magicprop bench quality`.

- `models`: the registry of shipped demo models (files, manifest, training recipes, `demo --train`).
- `methods`: the one method registry (what each table row runs) for both benchmarks.
- `metrics`: PSNR, SSIM, windows of frames, and the one per-method accumulation of scores.
- `report`: the one table printer, the frame strip and the quality plot.
- `seeds`: the seed ranges of training, validation, VAE, demo and quality clips.
- `flow_baseline`: Horn & Schunck optical flow and flow-warp propagation (the non-diffusion baseline).
- `demo`, `quality`: the two benchmarks.
"""
