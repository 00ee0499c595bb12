"""`python -m magicprop bench quality` on the shipped models, cut to a few frames."""

from __future__ import annotations

import json

import torch

from magicprop.benchmarks.methods import QUALITY_METHODS
from magicprop.benchmarks.metrics import psnr
from magicprop.benchmarks.seeds import QUALITY_SEED
from magicprop.cli import main
from magicprop.io.images import load_image
from magicprop.synthetic import SceneConfig, make_clip


def test_bench_quality_writes_every_method_json_plot_and_table(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "quality", "--out", str(out), "--clips", "1", "--frames", "4", "--short", "2",
                 "--steps", "1"]) == 0
    results = json.loads((out / "quality.json").read_text())
    assert results["skipped"] == [] and list(results["long"]) == [m.name for m in QUALITY_METHODS]
    assert "flow propagation (dis)" in results["long"] and "flow propagation (raft)" in results["unmeasured"]
    for run, frames in (("long", 4), ("short_run", 2)):
        for name, r in results[run].items():
            assert len(r["psnr_per_frame"]) == frames + 1 and len(r["ssim_per_frame"]) == frames + 1, name
            assert list(r["psnr_windows"]) == [f"1-{frames}"], name
    # the oracle row is what it says: ground-truth frame k-1 scored as frame k
    truth = make_clip(QUALITY_SEED, SceneConfig(size=results["size"], frames=5, bounce=True)).edit.frames
    expected = psnr(truth[:-1], truth[1:])
    assert torch.allclose(torch.tensor(results["long"]["copy true previous frame"]["psnr_per_frame"][1:]), expected,
                          atol=1e-3)
    # the plot: 14 x 5 inches at 100 dpi, white page with a curve per method in the default colour cycle
    plot = load_image(out / "quality.png")[0]
    assert plot.shape == (500, 1400, 3)
    assert (plot == 1).all(-1).float().mean() > 0.5 and plot.std() > 0.05
    colours = {tuple(c) for c in (plot * 255).round().to(torch.uint8).flatten(0, 1).tolist()
               if max(c) - min(c) > 100}  # saturated pixels: curves and legend, not text or grid
    assert len(colours) >= 5
    printed = capsys.readouterr().out  # the table is the command's output, printed even with -q
    assert "copy reference" in printed and "1-4" in printed and "slope/100" in printed
