"""How well an object judge counts, locates and colours: one image's score, and the tally over held-out renders.

Pure functions on any judge with `detect(images) -> [{"centres", "colors", "count"}]` (models/judge.py's
JudgeModule, or a test's stand-in) and CLEVRDataModule batches; the localization test is the protocol's
Hungarian matching (analysis/lengthgen/matching.py, `match_locations`). `python -m lcsbench eval-judge` prints the tally,
and the judge's validation scores every image with `score_detection`.
"""

from __future__ import annotations

import statistics
from collections import Counter

import torch

from lcsbench.analysis.lengthgen import match_locations
from lcsbench.data.scenes import COLOR_NAMES, DEFAULT_GRID_SIZE


def judge_accuracy(judge, batches, grid_size: int = DEFAULT_GRID_SIZE, tolerance_cells: float = 1.0,
                   clear_pixels: int = 20) -> dict[int, dict]:
    """Per true object count: images, exact-count rate, localization rate (all matched, no extra), colour rate,
    and the rates of undercounting and overcounting (they say whether the errors are missed or invented objects).

    The error analysis: `least_visible_missed` is the median, over undercounted images, of the fewest visible
    pixels of an object in the image, and `clear_images` / `clear_exact_count` restrict the exact-count rate
    to images whose every object shows at least `clear_pixels` pixels (where the scenes record it; the
    renderer keeps objects down to CLEVR's 0.26% of the image, 11 px at 64x64). `batches` yields
    CLEVRDataModule batches (held-out renders: `val_dataloader()`).
    """
    tallies: dict[int, Counter] = {}
    least_missed: dict[int, list[int]] = {}
    for batch in batches:
        images = batch["image"]
        cell = images.shape[-1] / grid_size
        for detection, centres, colors, visible in zip(judge.detect(images), batch["centres"], batch["colors"],
                                                       batch["visible"]):
            score = score_detection(detection, centres, colors, cell, tolerance_cells)
            least = int(visible[visible.ge(0)].min()) if visible.ge(0).any() else -1
            clear = least >= clear_pixels
            tallies.setdefault(score["true_count"], Counter()).update(
                {key: int(score[key]) for key in ("exact", "localized", "matched", "right_colors", "under", "over")},
                images=1, clear=int(clear), clear_exact=int(clear and score["exact"]))
            if score["under"] and least >= 0:
                least_missed.setdefault(score["true_count"], []).append(least)
    return {count: {"images": t["images"], "exact_count": t["exact"] / t["images"],
                    "localization": t["localized"] / t["images"],
                    "color": t["right_colors"] / t["matched"] if t["matched"] else float("nan"),
                    "undercount": t["under"] / t["images"], "overcount": t["over"] / t["images"],
                    "least_visible_missed": statistics.median(least_missed[count]) if count in least_missed
                    else float("nan"),
                    "clear_images": t["clear"],
                    "clear_exact_count": t["clear_exact"] / t["clear"] if t["clear"] else float("nan")}
            for count, t in sorted(tallies.items())}


def score_detection(detection: dict, centres: torch.Tensor, colors: torch.Tensor, cell: float,
                    tolerance_cells: float) -> dict:
    """One image's judgement against its truth (`centres` [N, 2] with NaN padding, `colors` [N]): the true
    count, exact count, under/over count, localized (every object matched, no extra), matched objects and
    how many of them have the right colour. Shared by validation and `judge_accuracy`."""
    true = centres[~torch.isnan(centres).any(-1)].cpu()
    match = match_locations(true.numpy(), detection["centres"].numpy(), cell, tolerance_cells)
    right = sum(COLOR_NAMES[int(colors[r])] == detection["colors"][d] for r, d in match["pairs"])
    return {"true_count": len(true), "exact": detection["count"] == len(true),
            "under": detection["count"] < len(true), "over": detection["count"] > len(true),
            "localized": match["missing"] == 0 and match["extra"] == 0, "matched": match["matched"],
            "right_colors": right}
