"""Video in, edited video out, without ComfyUI: the `python -m magicprop propagate` job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

from .backend import DiffusersDenoiser, StandaloneModels
from .depth import ClipDepthAligner, DepthEstimator, align_to, depth_from_image, depth_to_latent_grid
from .errors import MagicPropError
from .frames import crop_to_grid, list_images, load_image, resize_width
from .drift import AnchoredDenoiser
from .propagate import Keyframe, keyframe_plan, propagate_keyframes
from .video import iter_frames, probe, write_video

log = logging.getLogger(__name__)


@dataclass
class PropagateJob:
    """Inputs of one propagation run (the CLI's arguments)."""

    checkpoint: Path
    video: Path
    reference: Path | list[Path]
    """The edited frame, or several edited keyframes."""
    reference_index: int | list[int]
    """Its index among the selected frames (one per reference)."""
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
    keyframe_window: int = 8
    anchor_strength: float = 0.0

    @property
    def references(self) -> list[Path]:
        return [Path(r) for r in (self.reference if isinstance(self.reference, (list, tuple)) else [self.reference])]

    @property
    def reference_indices(self) -> list[int]:
        r = self.reference_index
        return list(r) if isinstance(r, (list, tuple)) else [r]


def _prepare(images: torch.Tensor, job: PropagateJob, what: str, notice: bool = False) -> torch.Tensor:
    return crop_to_grid(resize_width(images, job.width), what, notice)


def _check_files(job: PropagateJob) -> None:
    for name, paths in (("checkpoint", [job.checkpoint]), ("video", [job.video]), ("reference", job.references)):
        for p in map(Path, paths):
            if not p.is_file():
                raise MagicPropError(f"--{name} {str(p)!r} does not exist; pass an existing file.")
    if len(job.references) != len(job.reference_indices):
        raise MagicPropError(
            f"--reference gives {len(job.references)} images but --reference-index gives {len(job.reference_indices)} "
            "indices: give one frame index per edited reference."
        )
    for name in ("vae", "clip_vision", "depth_model"):
        p = getattr(job, name)
        if p is not None and not Path(p).is_dir():
            raise MagicPropError(f"--{name.replace('_', '-')} {str(p)!r} is not a folder; pass a local model folder.")
    if (job.depth_model is None) == (job.depth_frames is None):
        raise MagicPropError("depth: pass exactly one of --depth-model DIR (a transformers depth model) or "
                             "--depth-frames DIR (one depth image per frame, near = bright).")


def expected_frames(job: PropagateJob, container_frames: int | None) -> int | None:
    """How many frames the job will select, when the container says how many it has."""
    if container_frames is None:
        return None
    n = -(-container_frames // job.stride)
    return n if job.max_frames is None else min(n, job.max_frames)


def _depth_maps(job: PropagateJob, estimator: DepthEstimator | None, size: tuple[int, int], batch: int = 8):
    """Yield (H, W) relative inverse depth of the selected frames, in order, streaming from the video."""
    if job.depth_frames is not None:
        files = iter(list_images(job.depth_frames, "--depth-frames")[:: job.stride])
        for i, _frame in enumerate(iter_frames(job.video, job.max_frames, job.stride)):
            path = next(files, None)
            if path is None:
                raise MagicPropError(f"--depth-frames has fewer images than the {i + 1} selected frames "
                                     f"(stride {job.stride}); expected one depth image per source frame, in name order.")
            image = load_image(path, "depth frame")
            if image.shape[1:3] != size:
                raise MagicPropError(f"--depth-frames image {path.name} is {image.shape[2]}x{image.shape[1]} but the "
                                     f"video is {size[1]}x{size[0]}: expected depth maps of the same size.")
            yield depth_from_image(_prepare(image, job, "depth frames"))[0]
        return
    chunk: list[torch.Tensor] = []
    for frame in iter_frames(job.video, job.max_frames, job.stride):
        chunk.append(_prepare(frame[None], job, "frames")[0])
        if len(chunk) == batch:
            yield from estimator(torch.stack(chunk))
            chunk = []
    if chunk:
        yield from estimator(torch.stack(chunk))


def clip_depth(job: PropagateJob, size: tuple[int, int], grid: tuple[int, int], progress: bool = True) -> torch.Tensor:
    """(K, 1, h, w) aligned clip depth at the latent grid, streamed: frames are decoded, estimated and aligned one
    at a time, and only the latent-grid maps are kept (flat memory for long videos)."""
    from tqdm.auto import tqdm

    estimator = DepthEstimator.from_folder(job.depth_model, job.device) if job.depth_model is not None else None
    aligner = ClipDepthAligner(reduce=lambda m: depth_to_latent_grid(m, grid))
    for d in tqdm(_depth_maps(job, estimator, size), desc="depth", unit="frame", disable=not progress):
        aligner.push(d)
    return aligner.finish()


def _decoded_frames(models: StandaloneModels, latents: torch.Tensor, chunk: int = 8):
    for i in range(0, latents.shape[0], chunk):
        yield from models.decode(latents[i : i + chunk])


def run_propagate(job: PropagateJob, progress: bool = True) -> Path:
    """Run the whole job; returns the written mp4's path. Inputs are checked before any model is loaded.

    Memory stays flat in the clip's length beyond its latents: frames are streamed for depth, only latent-grid
    depth is kept, and frames are decoded and encoded to the file in chunks.
    """
    from tqdm.auto import tqdm

    _check_files(job)
    info = probe(job.video)
    size = (info.height, info.width)
    references = []
    for path in job.references:
        image = load_image(path, "--reference")
        if image.shape[1:3] != size:
            raise MagicPropError(
                f"--reference {path.name} is {image.shape[2]}x{image.shape[1]} but the video is {info.width}x"
                f"{info.height}: the edited reference must be a frame of this video, at the video's size."
            )
        references.append(image)
    indices = job.reference_indices
    expected = expected_frames(job, info.frames)
    if expected is not None:
        keyframe_plan(indices, expected, job.keyframe_window)  # index checks, with their messages, before any model
    ref_depth_img = None
    if job.reference_depth is not None:
        if len(references) != 1:
            raise MagicPropError("--reference-depth goes with a single --reference.")
        ref_depth_img = load_image(job.reference_depth, "--reference-depth")
        if ref_depth_img.shape[1:3] != size:
            raise MagicPropError(
                f"--reference-depth is {ref_depth_img.shape[2]}x{ref_depth_img.shape[1]}: expected the video size "
                f"{info.width}x{info.height}."
            )
    references = _prepare(torch.cat(references), job, "reference")
    grid = (references.shape[1] // 8, references.shape[2] // 8)
    _prepare(torch.zeros(1, *size, 1), job, "frames", notice=True)  # the crop notice, once
    depth_lat = clip_depth(job, size, grid, progress)  # (k, 1, h, w)
    k = depth_lat.shape[0]
    chains, _ = keyframe_plan(indices, k, job.keyframe_window)
    models = StandaloneModels.load(job.checkpoint, job.vae, job.clip_vision, job.device, job.dtype)
    ref_latents = models.encode(references)  # (n, 4, h, w)
    keyframes = []
    for i, index in enumerate(indices):
        reference, latent = references[i : i + 1], ref_latents[i : i + 1]
        ref_depth = None
        if ref_depth_img is not None:
            # the edited shape's depth, placed on the clip's scale by the same robust fit as the clip's frames
            rd = depth_to_latent_grid(depth_from_image(_prepare(ref_depth_img, job, "reference depth"))[:, None], grid)
            ref_depth = align_to(rd[0, 0], depth_lat[index, 0])[None, None]
        tokens = models.appearance_tokens(reference, latent)
        denoiser = DiffusersDenoiser(models.unet, models.config, tokens, job.steps, job.cfg, job.guidance_rescale)
        if job.anchor_strength > 0:
            denoiser = AnchoredDenoiser(denoiser, latent, job.anchor_strength)
        keyframes.append(Keyframe(index, latent, denoiser, ref_depth))
    with tqdm(total=sum(len(c.indices) - 1 for c in chains), desc="propagate", unit="frame",
              disable=not progress) as bar:
        latents = propagate_keyframes(keyframes, depth_lat, job.seed, job.keyframe_window,
                                      callback=lambda idx, _lat: bar.update(0 if idx in indices else 1))
    fps = Fraction(info.fps) / job.stride
    return write_video(job.out, _decoded_frames(models, latents), fps, audio_from=job.video if job.audio else None,
                       crf=job.crf, pix_fmt=job.pix_fmt)
