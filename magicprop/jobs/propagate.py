"""Video in, edited video out, without ComfyUI: the `python -m magicprop propagate` job.

The job reads its files (references, depth, the video's frames for depth), builds the run's inputs on the latent
grid and runs them through ``magicprop.propdpm.run``, the same core the ComfyUI node uses; frames are decoded and
written in chunks. A flow-guided checkpoint also gets its motion inputs: the video's frames are held, their flow is
estimated with the estimator the checkpoint records (``--flow`` and its settings may only repeat it), and the output is
composited under the carried pixels (``--no-composite`` turns that off).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

from ..composite import DEFAULT_BORDER
from ..errors import MagicPropError
from ..io.fileio import not_a_file
from ..io.images import check_reference_count, crop_to_grid, list_images, load_image, resize_width
from ..io.stream import write_video
from ..io.video import VideoInfo, check_out_path, check_outputs_apart, iter_frames, probe, to_uint8
from ..keyframes import check_keyframes, check_max_batch, keyframe_plan
from ..log import get_logger
from ..propdpm.checkpoint import inspect_checkpoint
from ..propdpm.depth import ClipDepthAligner, DepthEstimator, depth_from_image, depth_to_latent_grid
from ..propdpm.diffusers_backend import FrozenEncoders, StandaloneModels
from ..propdpm.run import DenoiserFactory, RunInputs, carried_for_run, generated_frames, propagate_run, run_inputs
from .options import VideoOptions

log = get_logger(__name__)


@dataclass(kw_only=True)
class PropagateJob(VideoOptions):
    """Inputs of one propagation run (the CLI's arguments)."""

    checkpoint: Path
    video: Path
    reference: Path | list[Path]
    """The edited frame, or several edited keyframes."""
    reference_index: int | list[int]
    """Its index among the selected frames (one per reference)."""
    out: str | Path
    vae: Path
    clip_vision: Path
    depth_model: Path | None = None
    depth_frames: Path | None = None
    reference_depth: Path | list[Path] | None = None
    """Depth image of each edited reference when the edit changed shapes (one per reference)."""
    steps: int = 20
    cfg: float = 1.0
    guidance_rescale: float = 0.0
    seed: int = 0
    dtype: torch.dtype = torch.float32
    keyframe_window: int = 8
    anchor_strength: float = 0.0
    # flow-guided checkpoints: the flow options, defaulting to what the checkpoint records (not FlowOptions' defaults)
    flow: str | None = None
    """Flow estimator for a flow-guided checkpoint (None: the one it records; another is refused)."""
    flow_weights: Path | None = None
    """RAFT weights file, when the checkpoint's estimator is RAFT."""
    flow_preset: str | None = None
    flow_size: int | None = None
    composite_border: int | None = DEFAULT_BORDER
    """Flow-guided checkpoints: px over which carried pixels fade into the model's (None: no composite)."""
    max_batch: int = 0
    """Frames per sampler call: the chains' ready frames batched (0 = all of them; 1 = one frame at a time)."""

    @property
    def references(self) -> list[Path]:
        return [Path(r) for r in (self.reference if isinstance(self.reference, (list, tuple)) else [self.reference])]

    @property
    def reference_depths(self) -> list[Path]:
        r = self.reference_depth
        return [] if r is None else [Path(p) for p in (r if isinstance(r, (list, tuple)) else [r])]

    @property
    def reference_indices(self) -> list[int]:
        r = self.reference_index
        return list(r) if isinstance(r, (list, tuple)) else [r]


def _prepare(images: torch.Tensor, job: PropagateJob, what: str, notice: bool = False) -> torch.Tensor:
    return crop_to_grid(resize_width(images, job.width), what, notice)


def _check_files(job: PropagateJob) -> None:
    job.check_video()
    check_out_path(job.out, "--out")
    check_outputs_apart([("--out", job.out)], [("--video", job.video), *(("--reference", p) for p in job.references),
                                               ("--depth-frames", job.depth_frames)])
    for name, paths in (("checkpoint", [job.checkpoint]), ("video", [job.video]), ("reference", job.references),
                        ("reference-depth", job.reference_depths)):
        for p in map(Path, paths):
            if name == "checkpoint" and p.is_dir() and (p / "unet").is_dir():
                raise MagicPropError(f"--checkpoint {str(p)!r} is a diffusers Stable Diffusion folder, not a PropDPM: "
                                     "make one with `python -m magicprop init --unet <this folder>` (untrained) or "
                                     "the trainer; to refine carried frames with it use `python -m magicprop refine`.")
            if not p.is_file():
                raise MagicPropError(f"--{name} {str(p)!r} {not_a_file(p)}; pass an existing file.")
    inspect_checkpoint(job.checkpoint)  # a file of another kind is named from its header, before any model runs
    check_max_batch(job.max_batch)
    check_reference_count(len(job.references), len(job.reference_indices))
    if job.reference_depths and len(job.reference_depths) != len(job.references):
        raise MagicPropError(
            f"--reference-depth gives {len(job.reference_depths)} images for {len(job.references)} references: give "
            "one depth image per edited reference, in the same order."
        )
    for name in ("vae", "clip_vision", "depth_model"):
        p = getattr(job, name)
        if p is not None and not Path(p).is_dir():
            raise MagicPropError(f"--{name.replace('_', '-')} {str(p)!r} is not a folder; pass a local model folder.")
    if (job.depth_model is None) == (job.depth_frames is None):
        raise MagicPropError("depth: pass exactly one of --depth-model DIR (a transformers depth model) or "
                             "--depth-frames DIR (one depth image per frame, near = bright).")


def flow_engine(job: PropagateJob, config):
    """The flow engine of a flow-guided checkpoint: its recorded estimator and settings, which --flow, --flow-preset,
    --flow-size may repeat but not change (one line naming both); None for a paper checkpoint."""
    from ..motion.engine import FlowEngine
    from ..propdpm.motion_inputs import check_flow_record, checkpoint_settings

    given = {"estimator": job.flow, "preset": job.flow_preset, "work_size": job.flow_size}
    if not config.flow_guided:
        if any(v is not None for v in given.values()):
            log.warning("--flow settings are not used: %s declares no motion inputs.", job.checkpoint.name)
        return None
    settings = checkpoint_settings(config, None if job.flow_weights is None else str(job.flow_weights), job.device)
    settings = dataclasses.replace(settings, **{k: v for k, v in given.items() if v is not None})
    engine = FlowEngine(settings)
    check_flow_record(config, settings.record(), f"--flow {settings.estimator}")
    return engine


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
                raise MagicPropError(
                    f"--depth-frames has fewer images than the {i + 1} selected frames (stride {job.stride}); "
                    "expected one depth image per source frame, in name order."
                )
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


def _frame_image(path: Path, what: str, job: PropagateJob, size: tuple[int, int]) -> torch.Tensor:
    """An image that stands for a frame of the video (reference, reference depth), prepared like the frames.

    It may be at the video's size or at its --width size (then it is taken as is); either way it is then cropped to
    the grid like the frames.
    """
    image = load_image(path, what)
    height, width = size
    resized = resize_width(torch.zeros(1, height, width, 1), job.width).shape[1:3]
    final = crop_to_grid(torch.zeros(1, *resized, 1), notice=False).shape[1:3]
    if image.shape[1:3] not in {tuple(size), tuple(resized), tuple(final)}:
        sizes = f"{width}x{height}"
        if job.width is not None:
            sizes += f" (--width {job.width}: {resized[1]}x{resized[0]})"
        fix = ("the edited reference must be a frame of this video, at the video's size." if job.width is None else
               "give it at either size: --width applies to both the video and the reference.")
        raise MagicPropError(f"{what} {path.name} is {image.shape[2]}x{image.shape[1]} but the video is {sizes}: {fix}")
    return _prepare(image, job, what)


@dataclass
class JobInputs:
    """What the job read from its files, before any PropDPM model is loaded."""

    info: VideoInfo
    references: torch.Tensor
    """(N, H, W, 3) edited references, prepared like the frames."""
    indices: list[int]
    depth: torch.Tensor
    """(K, 1, h, w) aligned clip depth on the latent grid."""
    reference_depth: torch.Tensor | None
    """(N, H, W) relative inverse depth of the edited references, or None."""
    engine: object | None = None
    """The flow engine of a flow-guided checkpoint (``flow_engine``), else None."""
    frames: torch.Tensor | None = None
    """(K, H, W, 3) uint8: the selected frames, prepared like the references (flow-guided checkpoints only; uint8
    holds a long clip in a quarter of float32's memory, exactly unless --width resized the frames)."""
    carried: object | None = None
    """After the run: a flow-guided run's carried frames (``magicprop.propdpm.motion_inputs.CarriedFrames``)."""

    def run_inputs(self, encoders: FrozenEncoders | StandaloneModels, config=None,
                   progress: bool = False) -> RunInputs:
        """The run's inputs: the references encoded, their depth placed on the latent grid (``magicprop.propdpm.run``),
        and for a flow-guided `config` the references carried through the frames by flow propagation."""
        carried = None
        if config is not None and self.engine is not None:
            from tqdm.auto import tqdm

            with tqdm(total=self.frames.shape[0], desc="flow propagation", unit="frame", disable=not progress) as bar:
                carried = carried_for_run(config, self.frames, self.references, self.indices, encoders.encode,
                                          self.engine, callback=lambda _k: bar.update(1), dtype=torch.float16)
        return run_inputs(encoders.encode(self.references), self.indices, self.depth, self.reference_depth, carried)


def read_job(job: PropagateJob, progress: bool = True) -> JobInputs:
    """Check the job and read its inputs; every input error is raised before the depth model runs."""
    _check_files(job)
    engine = flow_engine(job, inspect_checkpoint(job.checkpoint))
    info = probe(job.video)
    size = (info.height, info.width)
    references = torch.cat([_frame_image(p, "--reference", job, size) for p in job.references])
    indices = job.reference_indices
    expected = expected_frames(job, info.frames)
    check_keyframes(indices, expected, references=references.shape[0])  # with their messages, before any model
    if expected is not None:
        keyframe_plan(indices, expected, job.keyframe_window)  # and the window
    ref_depth = None
    if job.reference_depths:
        ref_depth = depth_from_image(torch.cat([_frame_image(p, "--reference-depth", job, size)
                                                for p in job.reference_depths]))
    grid = (references.shape[1] // 8, references.shape[2] // 8)
    _prepare(torch.zeros(1, *size, 1), job, "frames", notice=True)  # the crop notice, once
    depth = clip_depth(job, size, grid, progress)  # (k, 1, h, w)
    k = depth.shape[0]
    if job.max_frames is not None and k < job.max_frames:
        log.warning("%s has %d frames (after --stride %d) where --frames asked for %d; writing %d frames.",
                    job.video.name, k, job.stride, job.max_frames, k)
    elif expected is not None and k < expected:
        log.warning("%s: %d frames decoded (after --stride %d) where its container lists %d (is the file truncated?); "
                    "writing %d frames.", job.video.name, k, job.stride, expected, k)
    frames = None
    if engine is not None:  # flow propagation samples the whole clip
        frames = torch.empty(k, *references.shape[1:3], 3, dtype=torch.uint8)
        for i, f in zip(range(k), iter_frames(job.video, job.max_frames, job.stride)):
            frames[i] = torch.from_numpy(to_uint8(_prepare(f[None], job, "frames")[0]))
    return JobInputs(info, references, indices, depth, ref_depth, engine, frames)


def _decoded_frames(models: StandaloneModels, latents: torch.Tensor, carried=None,
                    border: int | None = DEFAULT_BORDER, chunk: int = 8):
    """The frames, decoded a chunk at a time; a flow-guided run's composited under its carried pixels."""
    from ..propdpm.motion_inputs import composite_carried

    for i in range(0, latents.shape[0], chunk):
        images = models.decode(latents[i : i + chunk])
        if carried is not None:
            images = composite_carried(images, carried.frames[i : i + chunk], carried.filled[i : i + chunk], border)
        yield from images


def propagate_latents(job: PropagateJob, progress: bool = True,
                      make_denoiser: DenoiserFactory | None = None) -> tuple[torch.Tensor, JobInputs, StandaloneModels]:
    """The job's (K, C, h, w) latents. `make_denoiser` replaces the checkpoint's diffusers denoisers (tests)."""
    from tqdm.auto import tqdm

    loaded = read_job(job, progress)
    models = StandaloneModels.load(job.checkpoint, job.vae, job.clip_vision, job.device, job.dtype)
    inputs = loaded.run_inputs(models, models.config, progress)

    def checkpoint_denoiser(i: int, _index: int):
        return models.denoiser(loaded.references[i : i + 1], inputs.reference_latents[i : i + 1], job.steps,
                               job.cfg, job.guidance_rescale)

    with tqdm(total=generated_frames(inputs, job.keyframe_window), desc="propagate", unit="frame",
              disable=not progress) as bar:
        def count(index: int, _latent) -> None:
            bar.update(0 if index in inputs.indices else 1)

        latents = propagate_run(inputs, make_denoiser or checkpoint_denoiser, job.seed, job.keyframe_window,
                                job.anchor_strength, callback=count, encode=models.encode, decode=models.decode,
                                composite_border=job.composite_border, max_batch=job.max_batch)
    return latents, dataclasses.replace(loaded, carried=inputs.carried), models


def run_propagate(job: PropagateJob, progress: bool = True) -> Path:
    """Run the whole job; returns the written mp4's path. Inputs are checked before any model is loaded.

    Memory stays flat in the clip's length beyond its latents: frames are streamed for depth, only latent-grid
    depth is kept, and frames are decoded and encoded to the file in chunks.
    """
    latents, loaded, models = propagate_latents(job, progress)
    fps = Fraction(loaded.info.fps) / job.stride
    frames = _decoded_frames(models, latents, loaded.carried, job.composite_border)
    return write_video(job.out, frames, fps, audio_from=job.video if job.audio else None, crf=job.crf,
                       pix_fmt=job.pix_fmt, tags=loaded.info.tags)
