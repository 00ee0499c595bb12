"""The report of `bench real`: the strip of kept frames and the plain-text tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ...io.fileio import atomic_path
from .score import COPY

STRIP = {"bigbuckbunny": "false colour", "bikes": "channel mix", "bigbuckbunny still": "stripes",
         "bikes still": "painted discs", "carphone": "channel mix"}
"""Clips shown in the strip (the first four of these that ran) and the edit shown for each."""


def write_strip(kept: dict, path: Path, columns: Sequence[str] = ("source", "edited reference", "propagated",
                                                                  "ground truth")) -> None:
    """PNG: for each kept clip, rows at a few frames of source | edited reference | propagated | ground truth."""
    from PIL import Image, ImageDraw

    tiles, labels = [], []
    width = max(p[0].shape[1] for panels in kept.values() for p in panels.values())
    for (clip, edit), panels in kept.items():
        for t, row in panels.items():
            row = torch.stack(row).float()
            if row.shape[2] != width:  # a smaller clip, enlarged to the strip's width
                size = (round(row.shape[1] * width / row.shape[2]), width)
                row = F.interpolate(row.permute(0, 3, 1, 2), size=size, mode="bilinear").permute(0, 2, 3, 1)
            tiles.append(torch.cat([F.pad(x.permute(2, 0, 1), (2, 2, 2, 2), value=1.0).permute(1, 2, 0)
                                    for x in row], 1))
            labels.append(f"{clip}, {edit}: frame {t}")
    head = 16
    canvas_w = tiles[0].shape[1]
    blocks = []
    for tile in tiles:  # a white bar above each row for its label (drawn below)
        blocks.append(torch.cat([torch.ones(head, canvas_w, 3), tile[:, :canvas_w]], 0))
    img = (torch.cat(blocks, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(img)
    draw = ImageDraw.Draw(image)
    y = 0
    for tile, label in zip(tiles, labels):
        cells = " | ".join(columns)
        draw.text((4, y + 2), f"{label}    ({cells})", fill=(0, 0, 0))
        y += head + tile.shape[0]
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def table(results: dict) -> str:
    """Plain-text tables: PSNR per window of every row (all pixels; flow rows also carried pixels / filled share)."""
    lines = []
    for key, title in (("colour", "colour edits"), ("known_motion", "known motion")):
        for clip, r in results[key].items():
            for edit, rows in r["edits"].items():
                wins = list(rows[COPY]["psnr"])
                lines.append(f"{title}: {clip} ({r['frames']} frames, {r['size'][1]}x{r['size'][0]}), {edit}")
                lines.append(f"  {'method':<44}" + "".join(f"{w:>9}" for w in wins)
                             + "   carried pixels (copy on them) / filled")
                for name, row in rows.items():
                    cells = "".join(f"{row['psnr'][w]:>9.2f}" for w in wins)
                    if "psnr_valid" in row:
                        cells += "   " + " ".join(
                            f"{row['psnr_valid'][w]:.1f}({row['copy_psnr_valid'][w]:.1f})/{row['filled'][w]:.2f}"
                            for w in wins)
                    lines.append(f"  {name:<44}{cells}")
    for name, reason in results["skipped"].items():
        lines.append(f"skipped: {name}: {reason}")
    if "speed" in results:
        s = results["speed"]
        lines.append(f"speed at {s['size'][1]}x{s['size'][0]} on CPU ({s['estimator']}, {s['strategy']}): flow "
                     f"{s['flow_fps']:.1f} frames/s (both directions), propagation {s['propagate_fps']:.1f} frames/s")
        if "fills" in s:
            fills = s["fills"]
            lines.append(f"seconds per frame at {s['size'][1]}x{s['size'][0]}, a stylized mid-clip keyframe, by fill: "
                         + ", ".join(f"{f} {v['seconds_per_frame']:.2f}" for f, v in fills.items())
                         + (f" (learned: {fills['learned']['training_seconds']:.1f} s of training once)"
                            if "training_seconds" in fills.get("learned", {}) else ""))
        lines.append("seconds per pair at the benchmark's resolution: " + ", ".join(
            f"{e} {v:.3f}" for e, v in s.get("seconds_per_pair", {}).items()))
    stats = results.get("path_statistics")
    if stats and results["known_motion"]:
        lines.append(f"known path: rotation {stats['rotation_deg'][0]:.1f}..{stats['rotation_deg'][1]:.1f} deg, zoom "
                     f"{stats['zoom'][0]:.2f}..{stats['zoom'][1]:.2f}, translation "
                     f"{stats['translation_x_of_width']:.2f} of the width, mean motion "
                     f"{stats['mean_motion_px_per_frame']:.1f} px/frame, layer covers "
                     f"{stats['layer_coverage'][0]:.2f}+ of the frame, visible in the reference "
                     f"{stats['visible_in_reference'][0]:.2f}..{stats['visible_in_reference'][1]:.2f} (min..mean) "
                     f"of each frame; meets bounds: {stats['meets_bounds']}")
    choice = results.get("choice", {})
    if choice.get("best"):
        lines.append(f"best flow row (this benchmark's rule): {choice['best']}")
    acc = results.get("acceptance", {})
    for name, c in acc.get("checks", {}).items():
        lines.append(f"{'PASS' if c['passed'] else 'FAIL'} {name}: worst {c['worst']:.2f} ({c['where']})")
    return "\n".join(lines)
