"""Video in, edited video out, without ComfyUI: the `python -m magicprop propagate` job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

from .backend import DiffusersDenoiser, StandaloneModels
from .depth import DepthEstimator, align_clip_depth, align_to, depth_from_image, depth_to_latent_grid
from .errors import MagicPropError
from .frames import crop_to_grid, list_images, load_image, resize_width
from .propagate import chain_order, propagate
from .video import probe, read_frames, write_video

log = logging.getLogger(__name__)


@dataclass
class PropagateJob:
    """Inputs of one propagation run (the CLI's arguments)."""

    checkpoint: Path
    video: Path
    reference: Path
    reference_index: int
    out: Path
    vae: Path
    clip_vision: Path
    depth_model: Path | None = None
    depth_frames: Path | None = None
    reference_depth: Path | None = None
    max_frames: int | None = None
    stride: int = 1
    width: int | None = None
    steps: int = 20
    cfg: float = 1.0
    guidance_rescale: float = 0.0
    seed: int = 0
    audio: bool = True
    crf: int = 18
    pix_fmt: str = "yuv420p"
    device: str = "cpu"
    dtype: torch.dtype = torch.float32


def _prepare(images: torch.Tensor, job: PropagateJob, what: str, notice: bool = False) -> torch.Tensor:
    return crop_to_grid(resize_width(images, job.width), what, notice)


def _check_files(job: PropagateJob) -> None:
    for name in ("checkpoint", "video", "reference"):
        p = Path(getattr(job, name))
        if not p.is_file():
            raise MagicPropError(f"--{name} {str(p)!r} does not exist; pass an existing file.")
    for name in ("vae", "clip_vision", "depth_model"):
        p = getattr(job, name)
        if p is not None and not Path(p).is_dir():
            raise MagicPropError(f"--{name.replace('_', '-')} {str(p)!r} is not a folder; pass a local model folder.")
    if (job.depth_model is None) == (job.depth_frames is None):
        raise MagicPropError("depth: pass exactly one of --depth-model DIR (a transformers depth model) or "
                             "--depth-frames DIR (one depth image per frame, near = bright).")


def clip_depth(job: PropagateJob, frames_raw: torch.Tensor) -> torch.Tensor:
    """(K, 1, H, W) aligned depth in [0, 1] for the prepared frames."""
    k = frames_raw.shape[0]
    if job.depth_frames is not None:
        files = list_images(job.depth_frames, "--depth-frames")[:: job.stride][:k]
        if len(files) < k:
            raise MagicPropError(
                f"--depth-frames has {len(files)} images for the {k} selected frames (stride {job.stride}); "
                "expected one depth image per source frame, in name order."
            )
        maps = torch.cat([load_image(f, "depth frame") for f in files])
        if maps.shape[1:3] != frames_raw.shape[1:3]:
            raise MagicPropError(
                f"--depth-frames images are {maps.shape[2]}x{maps.shape[1]} but the video is "
                f"{frames_raw.shape[2]}x{frames_raw.shape[1]}: expected depth maps of the same size."
            )
        rel = depth_from_image(_prepare(maps, job, "depth frames"))
    else:
        estimator = DepthEstimator.from_folder(job.depth_model, job.device)
        rel = estimator(_prepare(frames_raw, job, "frames"))
        del estimator
    return align_clip_depth(rel)


def run_propagate(job: PropagateJob, progress: bool = True) -> Path:
    """Run the whole job; returns the written mp4's path. Inputs are checked before any model is loaded."""
    from tqdm.auto import tqdm

    _check_files(job)
    info = probe(job.video)
    reference = load_image(job.reference, "--reference")
    if reference.shape[1:3] != (info.height, info.width):
        raise MagicPropError(
            f"--reference is {reference.shape[2]}x{reference.shape[1]} but the video is {info.width}x{info.height}: "
            "the edited reference must be a frame of this video, at the video's size."
        )
    frames_raw = read_frames(job.video, job.max_frames, job.stride)
    k = frames_raw.shape[0]
    chain_order(job.reference_index, k)  # range check, with its message, before any model is loaded
    frames = _prepare(frames_raw, job, "frames", notice=True)
    reference = _prepare(reference, job, "reference")
    ref_depth_img = None
    if job.reference_depth is not None:
        ref_depth_img = load_image(job.reference_depth, "--reference-depth")
        if ref_depth_img.shape[1:3] != (info.height, info.width):
            raise MagicPropError(
                f"--reference-depth is {ref_depth_img.shape[2]}x{ref_depth_img.shape[1]}: expected the video size "
                f"{info.width}x{info.height}."
            )

    depth = clip_depth(job, frames_raw)  # (k, 1, H, W)
    models = StandaloneModels.load(job.checkpoint, job.vae, job.clip_vision, job.device, job.dtype)
    ref_latent = models.encode(reference)  # (1, 4, h, w)
    grid = tuple(ref_latent.shape[-2:])
    depth_lat = depth_to_latent_grid(depth, grid)
    ref_depth = None
    if ref_depth_img is not None:
        # the edited shape's depth, placed on the clip's scale by the same robust fit as the clip's frames
        rd = depth_from_image(_prepare(ref_depth_img, job, "reference depth"))[0]
        ref_depth = depth_to_latent_grid(align_to(rd, depth[job.reference_index, 0])[None, None], grid)

    tokens = models.appearance_tokens(reference, ref_latent)
    denoiser = DiffusersDenoiser(models.unet, models.config, tokens, job.steps, job.cfg, job.guidance_rescale)
    with tqdm(total=k - 1, desc="propagate", unit="frame", disable=not progress) as bar:
        latents = propagate(
            denoiser, ref_latent, depth_lat, job.reference_index, job.seed, ref_depth,
            callback=lambda idx, _lat: bar.update(0 if idx == job.reference_index else 1),
        )
    fps = Fraction(info.fps) / job.stride
    decoded = models.decode(latents)
    return write_video(
        job.out, decoded, fps, audio_from=job.video if job.audio else None, crf=job.crf, pix_fmt=job.pix_fmt
    )
