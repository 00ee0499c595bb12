"""`python -m magicprop warp` streams (issue 25): frames are written as they become final, the result equals the
whole-clip core run exactly, and an interrupted run leaves a readable partial output holding exactly the frames it
logged (a PNG folder, and an mp4 that PyAV decodes)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from magicprop.cli import main
from magicprop.io.images import load_image, resize_width, save_image
from magicprop.io.spool import FrameSpool
from magicprop.io.video import list_frames, read_frames, read_png, to_uint8
from magicprop.motion.engine import FlowEngine, FlowSettings
from magicprop.motion.propagate import DEFAULT_STRATEGY, flow_propagate

ROOT = Path(__file__).resolve().parents[1]
FRAMES, WIDTH, WINDOW = 9, 96, 3


def _edit(frame: torch.Tensor) -> torch.Tensor:
    """A non-linear colour edit plus a painted square (something the flow has to carry, not only a grade)."""
    out = torch.stack([frame[..., 1], frame[..., 2], frame[..., 0]], -1).pow(0.6)
    out[40:80, 300:380] = torch.tensor([1.0, 0.2, 0.1])
    return out


@pytest.fixture(scope="module")
def edits(bigbuckbunny, tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("edits")
    frames = read_frames(bigbuckbunny, FRAMES)
    paths = {}
    for i in (1, 4, 7):
        paths[i] = folder / f"edit{i}.png"
        save_image(paths[i], _edit(frames[i]))
    return paths


def _u8(frames: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.from_numpy(to_uint8(f)) for f in frames.float()])


def _clip(video: Path) -> torch.Tensor:
    return _u8(resize_width(read_frames(video, FRAMES), WIDTH))  # the frames the CLI works on, as 8 bits


def _core(video: Path, refs: list[Path], indices: list[int], **options):
    """flow_propagate on the whole clip with the CLI's defaults, no sink: the whole-clip result."""
    reference = resize_width(torch.cat([load_image(p) for p in refs]), WIDTH).mul(255).round().div(255)
    engine = FlowEngine(FlowSettings(estimator="dis", preset="medium", work_size=512))
    return flow_propagate(_clip(video), reference, indices, engine, strategy=DEFAULT_STRATEGY, window=WINDOW,
                          dtype=torch.float16, **options)


def test_sink_gets_each_final_frame_once_equal_to_the_whole_clip_result(bigbuckbunny, edits):
    """Two keyframes (a blend window between them, chains both ways): the sink sees every frame once, exactly what the
    whole-clip result holds, from a FrameSpool as from a tensor, and nothing whole-clip is allocated."""
    whole = _core(bigbuckbunny, [edits[1], edits[7]], [1, 7], fill="colour")
    got: dict[int, tuple] = {}

    def sink(k, frame, filled):
        assert k not in got, f"frame {k} given twice"
        assert frame.dtype == torch.float16 and filled.dtype == torch.float16
        got[k] = (frame.clone(), filled.clone())

    reference = resize_width(torch.cat([load_image(edits[1]), load_image(edits[7])]), WIDTH).mul(255).round().div(255)
    engine = FlowEngine(FlowSettings(estimator="dis", preset="medium", work_size=512))
    with FrameSpool(_clip(bigbuckbunny)) as spool:
        result = flow_propagate(spool, reference, [1, 7], engine, strategy=DEFAULT_STRATEGY, window=WINDOW,
                                dtype=torch.float16, fill="colour", on_frame=sink)
    assert result.frames is None and result.filled is None
    assert sorted(got) == list(range(FRAMES))
    order = list(got)
    assert order[:2] == [1, 7]  # the keyframes are final first
    for k in range(FRAMES):
        assert torch.equal(got[k][0], whole.frames[k]), f"frame {k}"
        assert torch.equal(got[k][1], whole.filled[k]), f"filled share {k}"


def test_frames_between_keyframes_wait_in_a_temporary_file_one_gap_at_a_time(bigbuckbunny, edits, monkeypatch):
    """With a sink and two keyframes per frame (the default), the first chain's part of a frame between two keyframes
    waits in a temporary file (`TensorSlots`), never much more than one gap's frames at once, read back exactly: the
    sink sees the whole-clip result."""
    import magicprop.motion.propagate as propagate
    from magicprop.io.spool import TensorSlots

    live: set[int] = set()
    most = {"held": 0, "written": 0, "bytes": 0, "slot": 0}

    class Counted(TensorSlots):
        def __setitem__(self, k, x):
            super().__setitem__(k, x)
            live.add(k)
            most["held"], most["written"] = max(most["held"], len(live)), most["written"] + 1

        def __getitem__(self, k):
            live.discard(k)
            return super().__getitem__(k)

        def close(self):  # what the file grew to: slots are reused once read
            most["bytes"], most["slot"] = os.fstat(self._file.fileno()).st_size, self._bytes
            super().close()

    monkeypatch.setattr(propagate, "TensorSlots", Counted)
    keys = [1, 4, 7]
    reference = resize_width(torch.cat([load_image(edits[i]) for i in keys]), WIDTH).mul(255).round().div(255)
    engine = FlowEngine(FlowSettings(estimator="dis", preset="medium", work_size=512))
    got: dict[int, torch.Tensor] = {}
    flow_propagate(_clip(bigbuckbunny), reference, keys, engine, strategy=DEFAULT_STRATEGY, window=WINDOW,
                   dtype=torch.float16, fill="colour", on_frame=lambda k, frame, _filled: got.__setitem__(k, frame))
    whole = _core(bigbuckbunny, [edits[i] for i in keys], keys, fill="colour")
    assert sorted(got) == list(range(FRAMES)) and all(torch.equal(got[k], whole.frames[k]) for k in got)
    # every frame but the keyframes waits once; at most a gap (2 frames) and the frame the chains before the first
    # keyframe make in lockstep (frame 0); every part is read back
    assert most["written"] == FRAMES - len(keys) and most["held"] == 3 and not live
    assert most["bytes"] == 3 * most["slot"]


def _warp(video, refs: list[Path], indices: list[int], out, *extra, frames: int = FRAMES, width: int = WIDTH,
          fill: str | None = None) -> list[str]:
    return ["-q", "warp", "--video", str(video), "--reference", *map(str, refs), "--reference-index",
            *map(str, indices), "--out", str(out), "--frames", str(frames), "--width", str(width),
            "--keyframe-window", str(WINDOW), *(["--fill", fill] if fill else []), *map(str, extra)]


@pytest.mark.parametrize("keys, per_frame", [([4], None), ([1, 7], None), ([1, 7], 1)],
                         ids=["mid-clip reference", "two keyframes", "two keyframes, one per frame"])
def test_streamed_png_output_equals_the_whole_clip_run(tmp_path, bigbuckbunny, edits, keys, per_frame):
    """The default path (learned fill): the PNG folder written frame by frame decodes to the whole-clip result."""
    refs = [edits[i] for i in keys]
    out = tmp_path / "frames"
    extra = [] if per_frame is None else ["--keyframes-per-frame", per_frame]
    assert main(_warp(bigbuckbunny, refs, keys, f"{out}/", *extra)) == 0
    assert [p.name for p in list_frames(out)] == [f"{k:05d}.png" for k in range(FRAMES)]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    expected = _core(bigbuckbunny, refs, keys, **({} if per_frame is None else {"keyframes_per_frame": per_frame}))
    assert torch.equal(_u8(read_frames(out)), _u8(expected.frames))
    if per_frame == 1:  # the option reaches the core: one keyframe per frame differs from the default's two
        assert not torch.equal(_u8(expected.frames), _u8(_core(bigbuckbunny, refs, keys).frames))


# -- interrupted runs ----------------------------------------------------------------------------------------------

SLOW = {"frames": 80, "width": 192, "fill": "synthesis"}  # about 0.2 s a frame: room for a SIGINT mid-run
STOPPED = re.compile(r"warp stopped \(KeyboardInterrupt\) after making (\d+) of 80 frames; (.*)\.$", re.M)


def _frames_of(text: str) -> set[int]:
    """'0-2, 5' -> {0, 1, 2, 5}."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def _signalled(args: list[str], folder: Path, after: int, sig: int, ignored: int | None = None) -> tuple[int, str]:
    """Run the CLI in a subprocess (started with `ignored` ignored, as `nohup` starts SIGHUP), send `sig` once
    `folder` holds `after` frames; returns its exit status and stderr."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

    def start() -> None:
        # Ctrl-C's default in the child, whatever the test's own: a runner started in the background (`cmd &` without
        # job control, nohup) ignores SIGINT, its children inherit that, and Python then installs no KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if ignored is not None:
            signal.signal(ignored, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-m", "magicprop", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=start)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if folder.is_dir() and len([p for p in folder.glob("*.png")]) >= after:
                proc.send_signal(sig)
                break
            time.sleep(0.02)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def _interrupt(args: list[str], folder: Path, after: int, sig: int = signal.SIGINT) -> str:
    """`_signalled` with `sig` (Ctrl-C's SIGINT): the run stops with its exit status and one line; returns stderr."""
    code, err = _signalled(args, folder, after, sig)
    expected, said = (130, "interrupted") if sig == signal.SIGINT else \
        (128 + sig, f"terminated ({signal.Signals(sig).name})")
    assert code == expected, f"expected a stopped run (exit {expected}), got {code}:\n{err}"
    assert f"magicprop warp: {said}" in err and "Traceback" not in err, err
    return err


def _edit_of(video: Path, k: int, folder: Path) -> Path:
    path = folder / f"edit{k}.png"
    save_image(path, _edit(read_frames(video, k + 1)[k]))
    return path


def test_interrupted_png_run_leaves_the_frames_it_logged(tmp_path, bigbuckbunny):
    """Keyframe 40 of 80: its backward chain (39 .. 0) comes first, each frame written as it is made."""
    out = tmp_path / "frames"
    err = _interrupt(_warp(bigbuckbunny, [_edit_of(bigbuckbunny, 40, tmp_path)], [40], f"{out}/", **SLOW), out, 4)
    m = STOPPED.search(err)
    assert m, err
    said = re.search(r"--out \S+ holds (\d+) frames: ([\d, -]+)", m.group(2))
    assert said, err
    logged = _frames_of(said.group(2))
    on_disk = {int(p.stem) for p in list_frames(out)}
    assert on_disk == logged and len(logged) == int(said.group(1)) == int(m.group(1))
    assert 4 <= len(logged) < 80 and 40 in logged
    assert not [p for p in out.iterdir() if not re.fullmatch(r"\d{5}\.png", p.name)]  # no half-written file
    for k in logged:
        assert read_png(out / f"{k:05d}.png").shape == (108, 192, 3)


def test_interrupted_mp4_run_is_a_valid_shorter_video(tmp_path, bigbuckbunny):
    """Keyframe 0 (frames come in order): the mp4 holds the frames logged, PyAV decodes them, and they are the
    frames a clean run of that length makes (to the lossless codec's colour rounding); the PNG masks written beside it
    are exactly the frames logged for them."""
    import av

    video, masks = tmp_path / "out.mp4", tmp_path / "masks"
    edit = _edit_of(bigbuckbunny, 0, tmp_path)
    lossless = ["--crf", "0", "--pix-fmt", "yuv444p"]
    err = _interrupt(_warp(bigbuckbunny, [edit], [0], video, "--mask-out", f"{masks}/", *lossless, **SLOW), masks, 5)
    m = STOPPED.search(err)
    assert m, err
    said = re.search(r"--out \S+ holds (\d+) frames: 0-(\d+); --mask-out \S+ holds (\d+) frames: ([\d, -]+)",
                     m.group(2))
    assert said, err
    n = int(said.group(1))
    assert n == int(said.group(2)) + 1 and 5 <= n < 80
    assert {int(p.stem) for p in list_frames(masks)} == _frames_of(said.group(4)) == set(range(int(said.group(3))))
    with av.open(str(video)) as c:
        decoded = torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)])
    assert decoded.shape[0] == n
    clean = tmp_path / "clean"
    assert main(_warp(bigbuckbunny, [edit], [0], f"{clean}/", **dict(SLOW, frames=n))) == 0
    diff = (decoded.int() - _u8(read_frames(clean)).int()).abs()
    assert int(diff.max()) <= 2, f"mp4 frames differ from the clean run by up to {int(diff.max())}"


def test_a_terminated_run_closes_its_mp4_as_ctrl_c_does(tmp_path, bigbuckbunny):
    """SIGTERM (a scheduler stopping the job) stops the run as Ctrl-C does: the mp4 is finalised with the frames the
    log names, exit status 143; before, the process died with the mp4 unwritten."""
    import av

    video, masks = tmp_path / "out.mp4", tmp_path / "masks"
    edit = _edit_of(bigbuckbunny, 0, tmp_path)
    err = _interrupt(_warp(bigbuckbunny, [edit], [0], video, "--mask-out", f"{masks}/", **SLOW), masks, 5,
                     signal.SIGTERM)
    said = re.search(r"warp stopped \(Terminated\) after making (\d+) of 80 frames; --out \S+ holds (\d+) frames",
                     err)
    assert said, err
    with av.open(str(video)) as c:
        assert sum(1 for _ in c.decode(video=0)) == int(said.group(2)) >= 5


def test_a_run_started_ignoring_sighup_keeps_running_when_it_comes(tmp_path, bigbuckbunny):
    """`nohup` starts a run with SIGHUP ignored so that it outlives its terminal: the CLI keeps that (it stops on
    SIGHUP only when the signal has its default action)."""
    out = tmp_path / "frames"
    args = _warp(bigbuckbunny, [_edit_of(bigbuckbunny, 0, tmp_path)], [0], f"{out}/", **dict(SLOW, frames=24))
    code, err = _signalled(args, out, 2, signal.SIGHUP, ignored=signal.SIGHUP)
    assert code == 0, err
    assert len(list_frames(out)) == 24


def test_video_stream_encodes_in_frame_order_and_close_keeps_what_is_in_order(tmp_path):
    """Frames put backward then forward (a mid-clip keyframe's order) come out in frame order; frames waiting for an
    earlier one when the stream is closed are not in the file, which still decodes."""
    import av

    from magicprop.io.stream import VideoStream

    g = torch.Generator().manual_seed(0)
    frames = torch.rand(10, 32, 48, 3, generator=g)

    def decode(path):
        with av.open(str(path)) as c:
            return torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)])

    stream = VideoStream(tmp_path / "all.mp4", (32, 48), 25, crf=0, pix_fmt="yuv444p")
    for i, k in enumerate([5, 4, 3, 2, 1, 0, 6, 7, 8, 9]):
        stream.put(k, frames[k])
        assert stream.held() == (i + 1 if i < 5 else 0)
    stream.close()
    assert (decode(tmp_path / "all.mp4").int() - _u8(frames).int()).abs().max() <= 2

    stream = VideoStream(tmp_path / "part.mp4", (32, 48), 25, crf=0, pix_fmt="yuv444p")
    for k in [0, 1, 4, 3]:
        stream.put(k, frames[k])
    stream.close()  # 3 and 4 wait for 2
    assert (decode(tmp_path / "part.mp4").int() - _u8(frames[:2]).int()).abs().max() <= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.mp4", "part.mp4"]


def test_mask_folder_is_read_a_mask_at_a_time_and_gives_the_whole_clip_result(tmp_path, bigbuckbunny, edits):
    """A --mask folder (one mask per frame, a moving box) is no longer held whole: each mask read when used equals the
    stacked, resized masks, and the output equals the core run on them."""
    from magicprop.jobs.warp import MaskFolder

    folder = tmp_path / "masks"
    folder.mkdir()
    h, w = read_frames(bigbuckbunny, 1).shape[1:3]
    for k in range(FRAMES):
        m = torch.zeros(h, w, 3)
        m[100 + 20 * k : 500 + 20 * k, 200 + 40 * k : 900 + 40 * k] = 1
        save_image(folder / f"{k:05d}.png", m)
    stacked = resize_width(torch.stack([read_png(f) for f in list_frames(folder)]), WIDTH).amax(-1).clamp(0, 1)
    lazy = MaskFolder(list_frames(folder), WIDTH, tuple(stacked.shape[1:]))
    assert lazy.shape == tuple(stacked.shape) and lazy[2:].shape == (FRAMES - 2, *stacked.shape[1:])
    for k in range(FRAMES):
        assert torch.equal(lazy[k], stacked[k]), k
    out = tmp_path / "out"
    assert main(_warp(bigbuckbunny, [edits[4]], [4], f"{out}/", "--mask", folder)) == 0
    expected = _core(bigbuckbunny, [edits[4]], [4], mask=stacked)
    assert torch.equal(_u8(read_frames(out)), _u8(expected.frames))
