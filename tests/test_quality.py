"""`python -m magicprop bench quality` on the shipped models, cut to a few frames."""

from __future__ import annotations

import json

import torch

from magicprop.cli import main
from magicprop.evaluate import psnr
from magicprop.quality import METHODS, QUALITY_SEED
from magicprop.synthetic import SceneConfig, make_clip


def test_bench_quality_writes_every_method_json_plot_and_table(tmp_path, caplog):
    out = tmp_path / "bench"
    with caplog.at_level("INFO"):
        assert main(["bench", "quality", "--out", str(out), "--clips", "1", "--frames", "4", "--short", "2",
                     "--steps", "1"]) == 0
    results = json.loads((out / "quality.json").read_text())
    assert (out / "quality.png").stat().st_size > 1000
    assert results["skipped"] == [] and set(results["long"]) == {m.name for m in METHODS}
    assert "flow propagation (dis)" in results["long"] and "flow propagation (raft)" in results["unmeasured"]
    for run, frames in (("long", 4), ("short_run", 2)):
        for name, r in results[run].items():
            assert len(r["psnr_per_frame"]) == frames + 1 and len(r["ssim_per_frame"]) == frames + 1, name
            assert all(torch.isfinite(torch.tensor(r["psnr_per_frame"][1:]))), name
    # the oracle row is what it says: ground-truth frame k-1 scored as frame k
    truth = make_clip(QUALITY_SEED, SceneConfig(size=results["size"], frames=5, bounce=True)).edit.frames
    expected = psnr(truth[:-1], truth[1:])
    assert torch.allclose(torch.tensor(results["long"]["copy true previous frame"]["psnr_per_frame"][1:]), expected,
                          atol=1e-3)
    assert "copy reference" in caplog.text and "1-4" in caplog.text and "slope/100" in caplog.text
