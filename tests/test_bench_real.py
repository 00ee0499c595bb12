"""`bench real` on a reduced configuration: one real clip, one edit, a few frames, the default flow row."""

from __future__ import annotations

import json
import math

import pytest
import torch

from magicprop.benchmarks.real import camera_path, clips, edits, report, run, score
from magicprop.errors import MagicPropError
from magicprop.io.video import iter_frames


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from magicprop.motion.propagate import DEFAULT_CARRY, DEFAULT_STRATEGY

    out = tmp_path_factory.mktemp("bench_real")
    results = run.run_real(out, progress=False, clips=["carphone"], edits=["identity"],
                            known=["bigbuckbunny still"], spatial_edits=["stripes"], frames=4,
                            estimators=["dis", "raft"], strategies=[DEFAULT_STRATEGY], carries=[DEFAULT_CARRY],
                            speed=False)
    return out, results


def test_json_structure_rows_and_skips(smoke):
    out, results = smoke
    assert json.loads((out / "real.json").read_text()) == json.loads(json.dumps(results))
    default = results["config"]["default_row"]
    assert default == f"flow propagation ({results['config']['default_estimator']})"
    assert list(results["skipped"]) == ["flow propagation (raft)"] and "unmeasured" in results["skipped"][
        "flow propagation (raft)"]
    for suite, clip, edit in (("colour", "carphone", "identity"), ("known_motion", "bigbuckbunny still", "stripes")):
        r = results[suite][clip]
        assert r["frames"] == 5
        rows = r["edits"][edit]
        assert list(rows) == [score.COPY, score.TRANSFER, default]
        for name, row in rows.items():
            assert list(row["psnr"]) == ["1-4"] and len(row["psnr_per_frame"]) == 5, name
            assert math.isfinite(row["psnr"]["1-4"]), name
        flow = rows[default]
        assert set(flow) >= {"psnr_valid", "copy_psnr_valid", "filled", "cuts"}
        assert 0.0 <= flow["filled"]["1-4"] <= 1.0
    assert (out / "real.png").stat().st_size > 10_000  # the strip: 2 clips x 2 frames x 4 panels
    assert results["choice"]["best"] == default and results["choice"]["ranking"] == [default]
    assert set(results["acceptance"]["checks"]) and results["acceptance"]["row"] == default
    assert "copy reference" in report.table(results) and "meets bounds: True" in report.table(results)


def test_identity_truth_is_the_source_and_copy_reference_is_direct_psnr(smoke):
    _, results = smoke
    # the clip straight from the decoder (carphone is 176x144: below the working size, so not resized)
    frames = torch.stack([f for _, f in zip(range(5), iter_frames(clips.data_folder() / "carphone_pristine.mp4"))])
    source = clips.load_clip("carphone", 320, 4)
    assert torch.equal(source, frames)
    truth = edits.EDITS["identity"](source)
    assert torch.equal(truth, source)
    mse = ((frames[1:] - frames[:1]) ** 2).mean(dim=(1, 2, 3))
    expected = (-10 * torch.log10(mse)).tolist()
    got = results["colour"]["carphone"]["edits"]["identity"][score.COPY]["psnr_per_frame"][1:]
    assert got == pytest.approx(expected, abs=2e-3)
    assert results["colour"]["carphone"]["edits"]["identity"][score.COPY]["psnr"]["1-4"] == pytest.approx(
        sum(expected) / 4, abs=2e-3)


def test_colour_edits_are_per_pixel_maps():
    x = torch.rand(2, 5, 7, 3, generator=torch.Generator().manual_seed(0))
    for name, f in edits.EDITS.items():
        y = f(x)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1, name
        # per pixel: shuffling pixels commutes with the edit
        perm = torch.randperm(35, generator=torch.Generator().manual_seed(1))
        flat = x.reshape(2, 35, 3)[:, perm]
        assert torch.allclose(f(flat), f(x).reshape(2, 35, 3)[:, perm]), name
    assert not torch.allclose(edits.EDITS["false colour"](x), x)
    assert not torch.allclose(edits.EDITS["channel mix"](x), x)


def test_known_path_meets_its_bounds(smoke):
    _, results = smoke
    stats = results["path_statistics"]
    assert stats["frames"] == 120 and stats["size"] == [180, 320]  # 16:9 at the default long side
    assert stats == json.loads(json.dumps(camera_path.path_statistics(camera_path.PATH, (180, 320))))
    assert max(abs(r) for r in stats["rotation_deg"]) <= 10.0 + 1e-9 and stats["rotation_deg"][1] > 9.9
    assert stats["zoom"][0] >= 0.8 - 1e-9 and stats["zoom"][1] <= 1.25 + 1e-9
    assert stats["translation_x_of_width"] >= 0.25
    assert stats["mean_motion_px_per_frame"] >= 3.0
    assert stats["layer_coverage"][0] >= 0.10
    assert stats["meets_bounds"]
    # the reference is the widest view: every frame's background was seen by it, only the layer hides and reveals
    # (it covers ~11% of each frame, and hid ~11% of the reference)
    low, mean = stats["visible_in_reference"]
    assert 1 - 2.5 * stats["layer_coverage"][1] <= low <= mean <= 1 - stats["layer_coverage"][0] + 1e-6 and mean > 0.8


def test_visible_share_counts_what_the_reference_shows():
    size = (90, 160)
    assert camera_path.visible_share(camera_path.PATH, 0, size) == 1.0  # the reference shows itself
    zoom_in = camera_path.CameraPath(zoom_min=0.6, zoom_max=1.0)
    zoom_out = camera_path.CameraPath(zoom_min=1.0, zoom_max=0.6)
    assert camera_path.visible_share(zoom_in, 20, size) > 0.7  # at t = 20 the zoom is at its far end (measured 0.74)
    assert camera_path.visible_share(zoom_out, 20, size) < 0.5  # the reference is not the widest view: revealed (0.34)


def test_known_motion_is_rendered_from_the_path():
    """The rendered background moves as the path says: frame t sampled where `camera_map` puts frame 0's pixels
    gives back frame 0 (away from the layer and the frame's edges); the identity map does not."""
    import torch.nn.functional as F

    size = (198, 352)
    source, truths = camera_path.known_motion_clip(camera_path.KNOWN[0], ["stripes"], long_side=352, frames=6)
    assert source.shape == (7, *size, 3) and truths["stripes"].shape == source.shape
    assert (truths["stripes"] - source).abs().mean() > 0.05  # the edit shows
    grid_id = torch.stack(torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")[::-1], -1)
    for t in (3, 6):
        pos = camera_path.camera_map(camera_path.PATH, 0, t, size).float()
        grid = (pos + 0.5) / torch.tensor([size[1], size[0]]) * 2 - 1
        back = F.grid_sample(source[t].permute(2, 0, 1)[None], grid[None], mode="bilinear", align_corners=False)
        back = back[0].permute(1, 2, 0)
        layer = F.grid_sample(camera_path.layer_alpha(camera_path.PATH, t, size)[None, None].float(), grid[None],
                              align_corners=False)[0, 0]
        keep = (camera_path.layer_alpha(camera_path.PATH, 0, size) == 0) & (layer == 0) & (grid.abs() < 0.95).all(-1)
        assert keep.float().mean() > 0.3
        aligned = (back - source[0]).abs().mean(-1)[keep].mean()
        unaligned = (source[t] - source[0]).abs().mean(-1)[keep].mean()
        assert aligned < 0.02 and unaligned > 3 * aligned, (t, aligned, unaligned)
        # it moved as far as the path says: from rest at the widest view, then accelerating (measured 2.7 px mean
        # displacement at t = 3, 11.0 at t = 6)
        assert (pos - grid_id).norm(dim=-1).mean() > {3: 2.0, 6: 8.0}[t]


def test_bad_names_and_missing_weights_fail_before_work(tmp_path):
    with pytest.raises(MagicPropError, match="clip 'nope'.*bigbuckbunny"):
        run.run_real(tmp_path, clips=["nope"])
    with pytest.raises(MagicPropError, match="estimator 'sift'"):
        run.run_real(tmp_path, estimators=["sift"])
    with pytest.raises(MagicPropError, match="--flow-weights .*no such file"):
        run.run_real(tmp_path, flow_weights=tmp_path / "raft.pth")
    assert list(tmp_path.iterdir()) == []


def test_the_command_cuts_the_benchmark_to_suites_estimators_and_strategies(tmp_path, monkeypatch, capsys):
    from magicprop.cli import main

    seen = {}
    monkeypatch.setattr(run, "run_real", lambda out, **kw: seen.update(kw) or {})
    monkeypatch.setattr(report, "table", lambda results: "the table")
    assert main(["-q", "bench", "real", "--suites", "known", "--estimators", "dis", "raft", "--strategies", "guided",
                 "--out", str(tmp_path)]) == 0
    assert seen["clips"] == [] and seen["known"] is None  # the colour suite left out, every known-motion clip
    assert seen["speed"] is False  # and the speed section
    assert seen["estimators"] == ["dis", "raft"] and seen["strategies"] == ["guided"]
    assert "the table" in capsys.readouterr().out
    assert main(["-q", "bench", "real", "--suites", "speed", "--out", str(tmp_path)]) == 0
    assert seen["clips"] == [] and seen["known"] == [] and seen["speed"] is True
    monkeypatch.undo()
    assert main(["-q", "bench", "real", "--suites", "colour", "--estimators", "sift", "--out", str(tmp_path)]) != 0
    assert "bench real estimator 'sift'" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
