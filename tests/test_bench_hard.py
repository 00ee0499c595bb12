"""`python -m magicprop bench hard`: the renderer's ground truth and the command, cut to a few frames."""

from __future__ import annotations

import json

import torch

from magicprop.benchmarks.hard import CLIPS, EDITS, render, run_hard
from magicprop.cli import main


def test_the_renderer_knows_what_frame_0_showed():
    clip = CLIPS[1]  # the one with a layer crossing the frame
    source, shown = render(clip, 30)
    assert source.shape == (31, 180, 320, 3) and bool(shown[0].float().mean() > 0.99)
    unseen = (~shown).float().flatten(1).mean(1)
    assert 0.15 < float(unseen[30]) < 0.7  # the camera and the layer reveal content frame 0 never showed
    edited, shown_again = render(clip, 30, EDITS["painted discs"])
    assert torch.equal(shown, shown_again)  # the motion does not depend on the edit
    # where frame 0 showed a pixel's content, the same content (edited) is in frame 0: a near copy of the truth at
    # the corresponding place exists, so an exact carry is possible; where it did not, the edit differs from copying
    assert float((edited[30] - edited[0]).abs().mean()) > 0.02


def test_bench_hard_writes_every_row_and_prints_its_table(tmp_path, capsys):
    assert main(["-q", "bench", "hard", "--out", str(tmp_path), "--frames", "3"]) == 0
    results = json.loads((tmp_path / "hard.json").read_text())
    assert list(results["clips"]) == [c.name for c in CLIPS]
    rows = results["clips"][CLIPS[0].name]["edits"]["stylization"]
    assert {"copy reference", "flow propagation, colour fill", "flow propagation, synthesis fill"} <= set(rows)
    for name in ("flow propagation, colour fill", "flow propagation, synthesis fill"):
        r = rows[name]
        assert set(r) >= {"psnr", "psnr_shown", "psnr_never_shown", "filled", "warp_error", "seconds_per_frame"}
    printed = capsys.readouterr().out
    assert "never showed" in printed and "synthesis fill" in printed


def test_bench_hard_with_raft_weights_runs_every_row_on_raft(tmp_path):
    """`bench hard --flow-weights F`: the rows' flow is RAFT's, recorded in the config (tiny run: one clip, one edit,
    one fill, 2 frames; seeded random raft_small weights)."""
    from safetensors.torch import save_file
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    weights = tmp_path / "raft-small-test.safetensors"
    save_file({k: v.contiguous() for k, v in raft_small(weights=None, progress=False).state_dict().items()},
              str(weights))
    runs = {name: run_hard(tmp_path / name, frames=2, clips=CLIPS[:1], edits=("painted discs",), fills=("colour",),
                           progress=False, workers=1, flow_weights=w) for name, w in (("raft", weights), ("dis", None))}
    results = runs["raft"]
    assert results["config"]["estimator"]["estimator"] == "raft"
    assert results["config"]["estimator"]["weights"] == weights.name  # the file's name, never its folder
    assert runs["dis"]["config"]["estimator"]["estimator"] == "dis"
    rows = {name: r["clips"][CLIPS[0].name]["edits"]["painted discs"]["flow propagation, colour fill"]
            for name, r in runs.items()}
    assert len(rows["raft"]["psnr"]) == 1 and rows["raft"]["filled"]
    assert rows["raft"]["psnr"] != rows["dis"]["psnr"]  # the rows ran on RAFT's flow, not only the config says so
    assert json.loads((tmp_path / "raft" / "hard.json").read_text())["config"] == results["config"]


def test_bench_hard_refuses_a_missing_weights_file_before_any_work(tmp_path, capsys):
    assert main(["-q", "bench", "hard", "--out", str(tmp_path / "out"), "--flow-weights", str(tmp_path / "none.pth")]) \
        == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.pth" in err[0] and "no such file" in err[0]
    assert not (tmp_path / "out").exists()


def test_bench_hard_keyframes_mode_rows_and_acceptance(tmp_path, capsys):
    """`bench hard --keyframes 0 4`: per fill the first keyframe alone, one keyframe per frame and two, the keyframes
    left out of the windows; two per frame fill no more than one (a pixel is filled only where neither chain carries);
    its acceptance compares the two against the one (tiny run: one clip, one edit, 8 frames)."""
    from magicprop.benchmarks.hard import keyframe_rows, table

    results = run_hard(tmp_path, frames=8, clips=CLIPS[1:2], edits=("pencil sketch",), fills=("colour",),
                       progress=False, workers=1, keyframes=(0, 4))
    assert json.loads((tmp_path / "hard-keyframes.json").read_text())["config"]["keyframes"] == [0, 4]
    assert not (tmp_path / "hard.json").exists()
    rows = results["clips"][CLIPS[1].name]["edits"]["pencil sketch"]
    first, one, two = (rows[f"flow propagation, colour fill, {s}"] for s in keyframe_rows((0, 4)))
    assert list(two["psnr"]) == ["1-8"] and all(r["psnr"]["1-8"] < 60 for r in (first, one, two))  # not 100 dB
    assert two["filled"]["1-8"] <= one["filled"]["1-8"] + 1e-6 and one["psnr"] != first["psnr"]
    check = results["acceptance"]["checks"][f"{CLIPS[1].name} / pencil sketch / flow propagation, colour fill"]
    assert check["gain"]["1-8"] == two["psnr"]["1-8"] - one["psnr"]["1-8"]
    assert check["gain_over_first_alone"]["1-8"] == two["psnr"]["1-8"] - first["psnr"]["1-8"]
    assert "over the first alone" in table(results)


def test_bench_hard_refuses_bad_keyframes_before_any_work(tmp_path, capsys):
    for keys in (["0", "500"], ["3"]):
        assert main(["-q", "bench", "hard", "--out", str(tmp_path / "out"), "--keyframes", *keys]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and keys[-1] in err[0], err
    assert not (tmp_path / "out").exists()
