"""The carried frames refined with a Stable Diffusion model, without ComfyUI: the `python -m magicprop refine` job.

The same core as the FlowRefine node (``magicprop.refine.core``), on the diffusers backend
(``magicprop.refine.diffusers_backend``): the model's UNet, text encoder and scheduler from a local diffusers folder
(or a single-file checkpoint with its configs), the VAE through ``magicprop.propdpm.diffusers_backend.FrozenEncoders``,
an optional ControlNet with one hint per frame. Sampling follows ComfyUI's meaning of steps and denoise: `steps` steps
from the timestep where a run at `denoise` starts (DDIM, eta 0); filled pixels get the per-pixel levels of
``magicprop.refine.core`` (held at the noised input until their level is reached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch

from ..errors import MagicPropError
from ..io.images import list_images, load_image, resize
from ..io.spool import FrameSpool
from ..io.stream import Outputs
from ..io.video import (
    check_out_path,
    check_outputs_apart,
    is_frame_folder,
    iter_frames,
    kept_times,
    list_frames,
    probe,
    selected_numbers,
    to_uint8,
    warn_missing,
)
from ..keyframes import check_keyframes
from ..log import get_logger
from ..motion.engine import as_frame
from ..propdpm.unet import SINGLE_FILE_SUFFIXES
from ..refine.core import (
    RefineSettings,
    check_refine_inputs,
    flow_refine,
    refine_plan,
)
from ..refine.diffusers_backend import DiffusersRefiner, SDModels
from .options import FlowOptions
from .warp import read_selected, source_alpha

log = get_logger(__name__)

SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
"""Subfolders of a diffusers Stable Diffusion folder that refine loads (model_index.json is not needed)."""


@dataclass(kw_only=True)
class RefineJob(FlowOptions):
    """Inputs of one refine run (the CLI's arguments)."""

    video: str | Path
    """The source video (file or PNG folder): its flow (loopback), depth (--depth-model), fps and audio."""
    carried: str | Path
    """The carried frames (`warp --out`): an mp4 or a PNG folder, the selected frames of the video."""
    model: Path
    """A diffusers Stable Diffusion folder, or a single-file checkpoint with `single_file_config`."""
    out: str | Path
    reference_index: list[int] = field(default_factory=lambda: [0])
    prompt: str = ""
    negative_prompt: str = ""
    filled_mask: str | Path | None = None
    """`warp --mask-out`: a PNG folder or mp4 of the filled pixels (white = filled)."""
    denoise: float = 0.35
    filled_denoise: float = 0.6
    mode: str = "per_frame"
    noise: str = "fixed"
    seed: int = 0
    steps: int = 20
    cfg: float = 7.0
    border: int = 16
    keyframe_window: int = 8
    single_file_config: Path | None = None
    controlnet: Path | None = None
    control_frames: str | Path | None = None
    depth_model: Path | None = None
    depth_frames: Path | None = None
    controlnet_scale: float = 1.0
    fps: float | None = None
    """Frame rate of a PNG-folder video (which does not record one)."""
    dtype: torch.dtype = torch.float32
    max_batch: int = 0

    def settings(self) -> RefineSettings:
        return RefineSettings(mode=self.mode, noise=self.noise, seed=self.seed, denoise=self.denoise,
                              filled_denoise=self.filled_denoise, border=self.border, window=self.keyframe_window,
                              max_batch=self.max_batch)


# -- what a model path is --------------------------------------------------------------------------------------


def check_sd_model(path: Path, single_file_config: Path | None) -> None:
    """A plain Stable Diffusion model (4-channel UNet): a diffusers folder, or a single file with its configs.

    A PropDPM checkpoint, an inpainting or other widened UNet, a pickle, an image ... are refused in one line saying
    what the file is.
    """
    from ..propdpm.checkpoint import FORMAT_NAME, CheckpointError, read_safetensors_header

    path = Path(path)
    if path.is_dir():
        missing = [p for p in SD_PARTS if not (path / p).is_dir()]
        if missing:
            raise MagicPropError(f"--model {str(path)!r} has no {', '.join(missing)} folder: expected a diffusers "
                                 "Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/).")
        import json

        cfg = json.loads((path / "unet" / "config.json").read_text())
        if cfg.get("in_channels") != 4:
            raise MagicPropError(f"--model {path.name}'s UNet takes {cfg.get('in_channels')} input channels: not a "
                                 "plain Stable Diffusion model (4); refine takes the SD checkpoint the edit was made "
                                 "with (an inpainting model or a PropDPM does not fit).")
        return
    if not path.is_file():
        raise MagicPropError(f"--model {str(path)!r} does not exist; pass a local diffusers Stable Diffusion folder "
                             "or a single-file checkpoint.")
    if path.suffix.lower() == ".safetensors":
        try:
            header = read_safetensors_header(path)
        except CheckpointError as e:
            raise MagicPropError(f"--model: {e}") from None
        if (header.get("__metadata__") or {}).get("format") == FORMAT_NAME:
            raise MagicPropError(f"--model {path.name} is a PropDPM checkpoint (MagicProp metadata), not a plain "
                                 "Stable Diffusion model: propagate with it (`python -m magicprop propagate "
                                 "--checkpoint`); refine takes an SD checkpoint such as SD1.5.")
        for key in ("model.diffusion_model.input_blocks.0.0.weight", "conv_in.weight"):
            entry = header.get(key)
            if entry and entry["shape"][1] != 4:
                raise MagicPropError(f"--model {path.name} holds a UNet with {entry['shape'][1]} input channels: not "
                                     "a plain Stable Diffusion checkpoint (4; an inpainting model has 9).")
    elif path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise MagicPropError(f"--model {path.name}: expected a diffusers folder or a checkpoint file "
                             f"({', '.join(SINGLE_FILE_SUFFIXES)}).")
    if single_file_config is None or not Path(single_file_config).is_dir():
        raise MagicPropError(f"--model {path.name} is a single-file checkpoint: pass --single-file-config DIR, a "
                             "diffusers Stable Diffusion 1.5 folder with its configs and tokenizer files (weights not "
                             "needed), or pass a diffusers folder as --model.")


# -- reading the job's files ------------------------------------------------------------------------------------


def _frames_of(path, what: str, max_frames: int | None, stride: int = 1) -> torch.Tensor:
    if is_frame_folder(path):
        list_frames(path, what)
    elif not Path(path).is_file():
        raise MagicPropError(f"{what} {str(path)!r} does not exist; pass a video file or a folder of PNG frames.")
    frames = list(iter_frames(path, max_frames, stride))
    if not frames:
        raise MagicPropError(f"{what} {str(path)!r} has no decodable frames.")
    return torch.stack(frames)


def _fit(frames: torch.Tensor, size: tuple[int, int], what: str) -> torch.Tensor:
    if tuple(frames.shape[1:3]) != tuple(size):
        raise MagicPropError(f"{what} frames are {frames.shape[2]}x{frames.shape[1]} but the carried frames are "
                             f"{size[1]}x{size[0]}: give them at the carried frames' size.")
    return frames


def check_job(job: RefineJob) -> None:
    """Every input error visible from the arguments and file headers, before any frame is decoded or model loaded."""
    check_sd_model(job.model, job.single_file_config)
    job.settings().check()  # mode, noise, denoise and filled_denoise, border
    for name, path in (("--video", job.video), ("--carried", job.carried)):
        if is_frame_folder(path):
            warn_missing(list_frames(path, name), name)
        elif not Path(path).is_file():
            raise MagicPropError(f"{name} {str(path)!r} does not exist; pass a video file or a folder of PNG frames.")
    if job.filled_mask is not None and not Path(job.filled_mask).exists():
        raise MagicPropError(f"--filled-mask {str(job.filled_mask)!r} does not exist; pass the folder (or mp4) that "
                             "`warp --mask-out` wrote.")
    hints = [n for n, v in (("--control-frames", job.control_frames), ("--depth-model", job.depth_model),
                            ("--depth-frames", job.depth_frames)) if v is not None]
    if job.controlnet is not None:
        if not (Path(job.controlnet) / "config.json").is_file():
            raise MagicPropError(f"--controlnet {str(job.controlnet)!r}: expected a local diffusers ControlNetModel "
                                 "folder (config.json and weights).")
        if len(hints) != 1:
            raise MagicPropError("--controlnet needs exactly one hint source: --control-frames (one image per frame), "
                                 f"--depth-model or --depth-frames; got {hints or 'none'}.")
    elif hints:
        raise MagicPropError(f"{hints[0]} gives ControlNet hints but no --controlnet is given: pass --controlnet DIR "
                             "(a diffusers ControlNetModel folder), or leave the hints out.")
    job.check_video()
    check_out_path(job.out, "--out")
    check_outputs_apart([("--out", job.out)], [("--video", job.video), ("--carried", job.carried),
                                                ("--filled-mask", job.filled_mask),
                                                ("--control-frames", job.control_frames),
                                                ("--depth-frames", job.depth_frames)])
    if job.mode == "loopback":
        from ..motion.engine import FlowEngine

        FlowEngine(job.flow_settings())  # estimator known, OpenCV importable, RAFT weights present


class _Masks:
    """A spool of mask images as (K, H, W) float masks, white = filled, read one at a time when indexed."""

    def __init__(self, spool: FrameSpool) -> None:
        self.spool, self.shape = spool, tuple(spool.shape[:3])

    def __getitem__(self, k: int) -> torch.Tensor:
        return as_frame(self.spool[k]).amax(-1)


def _spool(path, what: str, max_frames: int | None) -> FrameSpool:
    """The first `max_frames` frames of a video or PNG folder, decoded once into a FrameSpool (uint8)."""
    return FrameSpool((to_uint8(f) for f in iter_frames(path, max_frames)), f"{what} {str(path)!r}")


def _read_hints(job: RefineJob, source: FrameSpool) -> torch.Tensor | None:
    """(K, H, W, 3) ControlNet hints in [0, 1] at the frames' size (for the whole clip: a depth model's are aligned
    to one scale over it)."""
    k, h, w = source.shape[:3]
    if job.control_frames is not None:
        hints = _frames_of(job.control_frames, "--control-frames", None, job.stride)[:k]
    elif job.depth_frames is not None:
        hints = torch.cat([load_image(p, "--depth-frames image") for p in
                           list_images(job.depth_frames, "--depth-frames")[:: job.stride][:k]])
    elif job.depth_model is not None:
        from ..propdpm.depth import ClipDepthAligner, DepthEstimator

        aligner = ClipDepthAligner()
        frames = torch.stack([as_frame(source[i]) for i in range(k)])
        for d in DepthEstimator.from_folder(job.depth_model, job.device)(frames):
            aligner.push(d)
        hints = aligner.finish()[:, 0, ..., None].expand(-1, -1, -1, 3)  # near = white, one scale for the clip
    else:
        return None
    if hints.shape[0] < k:
        raise MagicPropError(f"ControlNet hints: {hints.shape[0]} images for {k} frames; expected one per frame.")
    return hints if tuple(hints.shape[1:3]) == (h, w) else resize(hints, h, w)


def run_refine(job: RefineJob, progress: bool = True) -> Path:
    """Run the job; returns the written video's path (mp4 or PNG folder). Inputs are checked before any model is
    loaded.

    Streamed: the carried frames, the source frames and the filled masks are decoded once into `FrameSpool`s (uint8
    temporary files read a frame at a time) and each refined frame is written as soon as it is final (`io.stream`: a
    PNG folder at once, an mp4 in frame order); loopback's flow is estimated pair by pair (`PairwiseMotion`). What
    memory holds does not grow with the clip (each chain's previous frame, the blend window, a few flow pairs), except
    ControlNet hints, which are read for the whole clip (depth is aligned over the clip). An interrupted run leaves a
    valid partial output and logs which frames it holds."""
    from contextlib import ExitStack

    from tqdm.auto import tqdm

    check_job(job)
    with ExitStack() as held:
        carried = held.enter_context(_spool(job.carried, "--carried", job.max_frames))
        k, h, w = carried.shape[:3]
        if h % 8 or w % 8:
            raise MagicPropError(f"--carried frames are {w}x{h}: the VAE needs sides that are multiples of 8; warp a "
                                 "video resized to such a size (--width).")
        info = probe(job.video, job.fps)
        times: list[float] = []
        source = held.enter_context(read_selected(job, k, times))
        if source.shape[0] != k:
            raise MagicPropError(f"--video gives {source.shape[0]} frames (after --stride {job.stride}) for {k} "
                                 "carried frames: pass the --frames/--stride/--width given to warp.")
        _fit(source, (h, w), "--video (after --width)")
        masks = None
        if job.filled_mask is not None:
            masks = _Masks(held.enter_context(_spool(job.filled_mask, "--filled-mask", k)))
            _fit(masks, (h, w), "--filled-mask")
            if masks.shape[0] not in (1, k):
                raise MagicPropError(f"--filled-mask has {masks.shape[0]} masks for {k} carried frames: expected one "
                                     "per carried frame (what `warp --mask-out` writes).")
        keys = check_keyframes(job.reference_index, k)
        settings = job.settings()
        motion = None
        if job.mode == "loopback" and k > 1:  # pair by pair as the chains step through it: no whole-clip flow held
            from ..motion.engine import FlowEngine, PairwiseMotion

            motion = PairwiseMotion(FlowEngine(job.flow_settings()), lambda i: source[i], k, (h, w))
        check_refine_inputs(carried, masks, keys, settings, motion)
        hints = _read_hints(job, source)
        models = SDModels.load(job.model, job.single_file_config, job.controlnet, job.device, job.dtype)
        plan = refine_plan(keys, k, settings, masks)
        fps = Fraction(info.fps) / job.stride
        audio = job.video if job.audio and info.has_audio and not is_frame_folder(job.video) else None
        with Outputs("refine", k) as outputs, \
                tqdm(total=len(plan), desc=f"refine ({job.mode})", unit="frame", disable=not progress) as bar:
            outputs.open(job.out, (h, w), fps, "--out", audio_from=audio, crf=job.crf, pix_fmt=job.pix_fmt,
                         tags=info.tags, times=kept_times(times, fps, f"--video {str(job.video)!r}"),
                         numbers=selected_numbers(job.video, job.stride, k), alpha=source_alpha(job, k))
            refiner = DiffusersRefiner(models, job.prompt, job.negative_prompt, job.steps, job.cfg, job.denoise,
                                       job.filled_denoise, hints, job.controlnet_scale)
            sampled = set(plan)

            def done(index: int, image: torch.Tensor) -> None:
                outputs.put(index, image)
                if index in sampled:
                    bar.update(1)

            flow_refine(carried, masks, keys, refiner, settings, motion=motion, callback=done, keep=False)
    return Path(job.out)
