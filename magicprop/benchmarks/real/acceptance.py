"""Which flow row `bench real` picks as the default and the acceptance checks on it, both against one set of margins."""

from __future__ import annotations

import math

from .score import COPY, TRANSFER

MARGINS = {"colour_over_copy": 1.0, "known_over_copy": 8.0, "known_drift": 3.0}
"""The acceptance margins (dB), written once for the ranking (`choose_default`) and the checks (`acceptance`): flow
propagation beats copy-reference by `colour_over_copy` on colour edits (all pixels and flow-carried pixels) and by
`known_over_copy` under known motion, where frames 91-120 drop at most `known_drift` below frames 1-30."""


def _all_rows(results: dict):
    """(suite, clip, edit, rows) for every scored case."""
    for suite, key in (("colour", "colour"), ("known motion", "known_motion")):
        for clip, r in results[key].items():
            for edit, rows in r["edits"].items():
                yield suite, clip, edit, rows


def choose_default(results: dict) -> dict:
    """The flow row that scores best: ranked by the mean over the two suites of each suite's mean window PSNR.

    Evidence per row: each suite's mean PSNR, its worst margin over copy-reference (all and carried pixels), and the
    known-motion drift (last window minus first). Rows that fail the acceptance margins rank after those that pass.
    """
    table: dict[str, dict] = {}
    for suite, _, _, rows in _all_rows(results):
        copy = rows[COPY]["psnr"]
        for name, r in rows.items():
            if not name.startswith("flow propagation"):
                continue
            e = table.setdefault(name, {"colour": [], "known motion": [], "worst_margin_colour": math.inf,
                                        "worst_margin_colour_carried": math.inf, "worst_margin_known": math.inf,
                                        "worst_drift_known": -math.inf})
            wins = list(r["psnr"])
            e[suite].extend(r["psnr"][w] for w in wins)
            margins = [r["psnr"][w] - copy[w] for w in wins]
            if suite == "colour":
                e["worst_margin_colour"] = min(e["worst_margin_colour"], *margins)
                e["worst_margin_colour_carried"] = min(e["worst_margin_colour_carried"], *(
                    r["psnr_valid"][w] - r["copy_psnr_valid"][w] for w in wins if r["psnr_valid"][w] is not None))
            else:
                e["worst_margin_known"] = min(e["worst_margin_known"], *margins)
                if len(wins) > 1:
                    e["worst_drift_known"] = max(e["worst_drift_known"], r["psnr"][wins[0]] - r["psnr"][wins[-1]])
    evidence = {}
    for name, e in table.items():
        means = [sum(v) / len(v) for v in (e["colour"], e["known motion"]) if v]
        evidence[name] = {"mean_psnr_colour": sum(e["colour"]) / len(e["colour"]) if e["colour"] else None,
                          "mean_psnr_known_motion": sum(e["known motion"]) / len(e["known motion"])
                          if e["known motion"] else None,
                          "score": sum(means) / len(means) if means else float("nan"),
                          **{k: (None if math.isinf(e[k]) else e[k]) for k in (
                              "worst_margin_colour", "worst_margin_colour_carried", "worst_margin_known",
                              "worst_drift_known")}}
        ev = evidence[name]
        ev["passes_margins"] = bool(
            (ev["worst_margin_colour"] is None or ev["worst_margin_colour"] >= MARGINS["colour_over_copy"])
            and (ev["worst_margin_colour_carried"] is None
                 or ev["worst_margin_colour_carried"] >= MARGINS["colour_over_copy"])
            and (ev["worst_margin_known"] is None or ev["worst_margin_known"] >= MARGINS["known_over_copy"])
            and (ev["worst_drift_known"] is None or ev["worst_drift_known"] <= MARGINS["known_drift"]))
    ranking = sorted(evidence, key=lambda n: (not evidence[n]["passes_margins"], -evidence[n]["score"]))
    return {"best": ranking[0] if ranking else None, "ranking": ranking, "evidence": evidence,
            "rule": "rows passing every acceptance margin first, then by the mean over the two suites of the mean "
                    "window PSNR (all pixels)"}


def acceptance(results: dict, row: str) -> dict:
    """The lead's checks on `row` (the default), each with its worst measured value."""
    checks = {}
    colour_all, colour_carried, known_copy, known_transfer, drift = [], [], [], [], []
    for suite, clip, edit, rows in _all_rows(results):
        if row not in rows:
            continue
        r, copy, transfer = rows[row], rows[COPY]["psnr"], rows[TRANSFER]["psnr"]
        for w in r["psnr"]:
            where = f"{clip} / {edit} / {w}"
            if suite == "colour":
                colour_all.append((r["psnr"][w] - copy[w], where))
                if r["psnr_valid"][w] is not None:
                    colour_carried.append((r["psnr_valid"][w] - r["copy_psnr_valid"][w], where))
            else:
                known_copy.append((r["psnr"][w] - copy[w], where))
                known_transfer.append((r["psnr"][w] - transfer[w], where))
        wins = list(r["psnr"])
        if suite == "known motion" and wins[0] == "1-30" and "91-120" in wins:
            drift.append((r["psnr"]["1-30"] - r["psnr"]["91-120"], f"{clip} / {edit}"))
    colour, known, drop = MARGINS["colour_over_copy"], MARGINS["known_over_copy"], MARGINS["known_drift"]
    for name, values, passes, worst in (
        (f"colour: beats copy-reference by >= {colour:g} dB in every window (all pixels)", colour_all,
         lambda v: v >= colour, min),
        (f"colour: beats copy-reference by >= {colour:g} dB in every window (flow-carried pixels)", colour_carried,
         lambda v: v >= colour, min),
        (f"known motion: >= {known:g} dB above copy-reference in every window", known_copy, lambda v: v >= known, min),
        ("known motion: above colour transfer (no flow) in every window", known_transfer, lambda v: v > 0, min),
        (f"known motion: frames 91-120 within {drop:g} dB of frames 1-30 (drop)", drift, lambda v: v <= drop, max),
    ):
        values = [(v, w) for v, w in values if v is not None and math.isfinite(v)]
        if not values:
            continue
        v, where = worst(values)
        checks[name] = {"passed": bool(passes(v)), "worst": round(v, 3), "where": where}
    return {"row": row, "checks": checks, "passed": all(c["passed"] for c in checks.values())}
