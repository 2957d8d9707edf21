"""Length-generalization protocol, part 2: matching judged detections to the requests (Appendix E.2).

Locations by the Hungarian algorithm within a tolerance in grid cells (`MATCH_RULES`: cell or point), colours
as multisets; `judge_request` picks the rule for one request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from lcsbench.analysis.lengthgen.protocol import (cell_centres_pixels, check_match_rule, check_tolerance,
                                                  fractions_to_pixels)


# --- matching detections to requests -----------------------------------------------------------------


def match_locations(
    requested: np.ndarray | Sequence[Sequence[float]],  # [k, 2] requested centres (x, y) in pixels
    detected: np.ndarray | Sequence[Sequence[float]],  # [m, 2] detected centres (x, y) in pixels
    cell_pixels: float,  # size of one conditioning-grid cell in pixels (resolution / G)
    tolerance_cells: float = 1.0,  # a pair matches when at most this many cells apart
    per_axis: bool = False,  # True: the distance along each axis (the cell rule); False: Euclidean
) -> dict:
    """Hungarian matching of detections to requested centres; pairs farther than the tolerance do not match.

    Returns `{"matched", "missing", "extra", "detected", "pairs"}` with `pairs` the (request, detection)
    index pairs. A duplicate detection of one object can match at most once: the second is extra.
    """
    requested = np.asarray(requested, dtype=np.float64).reshape(-1, 2)
    detected = np.asarray(detected, dtype=np.float64).reshape(-1, 2)
    radius = check_tolerance(tolerance_cells) * cell_pixels
    pairs: list[tuple[int, int]] = []
    if len(requested) and len(detected):
        offset = np.abs(requested[:, None, :] - detected[None, :, :])
        distance = offset.max(axis=-1) if per_axis else np.linalg.norm(offset, axis=-1)
        # An out-of-tolerance pair costs more than all in-tolerance pairs together, so the assignment first
        # maximizes the number of in-tolerance pairs, then minimizes their distance; out-of-tolerance pairs drop.
        out_of_tolerance = radius * (len(requested) + len(detected)) + 1.0
        cost = np.where(distance <= radius, distance, out_of_tolerance)
        rows, cols = linear_sum_assignment(cost)
        pairs = [(int(r), int(c)) for r, c in zip(rows, cols) if distance[r, c] <= radius]
    matched = len(pairs)
    return {"matched": matched, "missing": len(requested) - matched, "extra": len(detected) - matched,
            "detected": len(detected), "pairs": pairs}


def match_colors(requested: Sequence[str], detected: Sequence[str]) -> dict:
    """Multiset matching of requested colours with detected object colours."""
    want, have = Counter(requested), Counter(detected)
    matched = sum((want & have).values())
    return {"matched": matched, "missing": len(requested) - matched, "extra": len(detected) - matched,
            "detected": len(detected)}

def judge_request(
    request: Mapping,  # a protocol request
    detection: Mapping,  # judge output for its image: {"centres": [m, 2] pixels, "colors": [m names]}
    resolution: int,  # image size in pixels
    grid_size: int,  # conditioning grid G (the tolerance is in its cells)
    tolerance_cells: float = 1.0,
    match: str = "cell",  # cell | point (MATCH_RULES)
) -> dict:
    """Match one judged image against its request (locations: Hungarian; colours: multisets)."""
    if "locations" in request:
        centres = detection["centres"]
        centres = centres.numpy() if isinstance(centres, torch.Tensor) else np.asarray(centres)
        if check_match_rule(match) == "cell":
            wanted = cell_centres_pixels(request["locations"], grid_size, resolution)
        else:
            wanted = fractions_to_pixels(request["locations"], resolution)
        return match_locations(wanted, centres, resolution / grid_size, tolerance_cells, per_axis=match == "cell")
    return match_colors(request["colors"], detection["colors"])

