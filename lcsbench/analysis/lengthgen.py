"""Length-generalization protocol (paper Section 2, Table 1, Appendix E.2), made automatic and counting.

The paper conditions on k = 1..12 of twelve fixed locations (or k = 1..8 colours), draws 8 samples per k and
counts objects by eye. Here a detector (the judge) returns object centres (and, for colour, object colours)
per image, and these pure functions turn them into per-k scores:

1. requests: `requested_locations(k)` (the first k of PAPER_LOCATIONS, or a random k-subset) and
   `requested_colors(k)` (the first k of PAPER_COLORS);
2. matching: `match_locations` pairs detections with requested centres by the Hungarian algorithm
   (scipy.optimize.linear_sum_assignment) and keeps pairs within `tolerance_cells` grid cells
   (default 1 cell = resolution / G pixels). Two rules (`MATCH_RULES`): `cell` (default, the paper's: a
   location is a grid cell, as the model is told; a detection matches when its centre lies within the
   tolerance of the requested cell's centre along each axis) and `point` (Euclidean distance to the requested
   point itself: stricter, since a point on a cell edge is half a cell from where a correct object may sit);
   `match_colors` matches colour multisets. Both return
   `{"matched", "missing", "extra", "detected"}`: requested objects found, requested objects not found,
   detections matched to no request;
3. success (`SuccessRule`, E.2): every requested object present (missing = 0, at its location or of its
   colour) and a number of extra objects the training data showed beside the named ones; with n the largest
   trained object count, at every k (inside and beyond the trained counts), for both kinds:
   - `all` (Exp. 1, colour): exactly the requested objects (extra = 0);
   - `single` (Exp. 2/3) and `random` (Table 2): 0 to n - 1 extra objects (the paper's "k+(0-(n-1))", e.g.
     "1+(0-2)" for 1-3 objects);
   - `drop_one` (Table 2): exactly one extra object;
4. aggregation: `LengthGenTally` accumulates per-k counts (samples, successes, missing, extra, histogram
   of detected counts) that add across processes; `summarize` gives per-k rates and
   `k_max` = the largest k with success rate > 25% for every k' <= k (the paper's rule), `k_max_strict`
   the same with > 50%.

`lengthgen.json` (written by `python -m lcsbench lengthgen`, see `lengthgen_report`):

    {
      "protocol": {"kind", "ks", "order", "match", "tolerance_cells", "grid_size", "resolution",
                   "trained_counts", "label_mode", "samples_per_k", "success_rule"},
      "rows": {
        "model":  {"k_max", "k_max_strict", "per_k": {"<k>": {"samples", "successes", "success_rate",
                   "mean_missing", "mean_extra", "mean_detected", "count_histogram": {"<count>": n}}}},
        "oracle": {... same keys, the judge on Blender renders of the same requested layouts ...}
      }
    }

The oracle row measures the judge's own error on exact renders of the requests: a model's row is
trustworthy only up to the k where the oracle row stays near 100%.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from lcsbench.data.conditioning import LABEL_MODES, PAPER_COLORS, PAPER_LOCATIONS

K_MAX_THRESHOLD = 0.25  # E.2: "succeeds ... more than 25% of the time"
MATCH_RULES = ("cell", "point")  # where a requested location counts as hit (module docstring, item 2)
K_MAX_STRICT_THRESHOLD = 0.5


# --- requested conditioners per k (E.1, E.2) ----------------------------------------------------------


def requested_locations(
    k: int,  # number of requested objects
    order: str = "paper",  # paper: the first k of PAPER_LOCATIONS; random: a random k-subset of them
    generator: torch.Generator | None = None,  # required for order="random"
) -> list[tuple[float, float]]:
    """k requested locations as (x, y) image fractions (x = column, y = row), from the paper's 12."""
    if not 1 <= k <= len(PAPER_LOCATIONS):
        raise ValueError(f"location requests take k in 1..{len(PAPER_LOCATIONS)} (the paper's {len(PAPER_LOCATIONS)} "
                         f"evaluation locations, Appendix E.1), got k={k}: lower the largest k")
    if order == "paper":
        return list(PAPER_LOCATIONS[:k])
    if order == "random":
        if generator is None:
            raise ValueError("order='random' draws k-subsets: pass generator=torch.Generator().manual_seed(seed)")
        chosen = torch.randperm(len(PAPER_LOCATIONS), generator=generator)[:k].sort().values
        return [PAPER_LOCATIONS[i] for i in chosen.tolist()]
    raise ValueError(f"order must be 'paper' or 'random', got {order!r}")


def requested_colors(k: int) -> list[str]:
    """The first k of the paper's 8 evaluation colours (E.1)."""
    if not 1 <= k <= len(PAPER_COLORS):
        raise ValueError(f"colour requests take k in 1..{len(PAPER_COLORS)} (the paper's {len(PAPER_COLORS)} "
                         f"evaluation colours), got k={k}: lower the largest k")
    return list(PAPER_COLORS[:k])


def fractions_to_pixels(locations: Sequence[Sequence[float]], resolution: int) -> np.ndarray:
    """`[k, 2]` float pixel centres (x, y), origin top-left, of (x, y) image fractions."""
    return np.asarray(locations, dtype=np.float64).reshape(-1, 2) * resolution


def cell_centres_pixels(locations: Sequence[Sequence[float]], grid_size: int, resolution: int) -> np.ndarray:
    """`[k, 2]` pixel centres (x, y) of the grid cells holding (x, y) image fractions: the cell is what a
    location conditioner tells the model (E.1, `location_cell`), so the cell rule measures from its centre."""
    from lcsbench.data.conditioning import location_cell

    cell = resolution / grid_size
    cells = [location_cell(float(x), float(y), grid_size) for x, y in locations]
    return np.asarray([((col + 0.5) * cell, (row + 0.5) * cell) for row, col in cells],
                      dtype=np.float64).reshape(-1, 2)


def check_tolerance(tolerance_cells: float) -> float:
    """A matching tolerance must be a positive, finite number of cells: anything else is refused up front."""
    if not (isinstance(tolerance_cells, (int, float)) and math.isfinite(tolerance_cells) and tolerance_cells > 0):
        raise ValueError(f"the matching tolerance is a positive number of grid cells (1 is the protocol's), got "
                         f"{tolerance_cells!r}")
    return float(tolerance_cells)


def check_match_rule(match: str) -> str:
    if match not in MATCH_RULES:
        raise ValueError(f"the location match rule is one of {', '.join(MATCH_RULES)}, got {match!r}")
    return match


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


# --- success rule (E.2) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuccessRule:
    """When a sample with k requested objects counts as a success (E.2, Table 1, Table 2).

    A success draws every requested object (at its location, or of its colour) and, beside them, a number of
    extra objects that the training data showed beside its named objects. The label mode decides how many
    objects of a training scene its conditioner names (`conditioning.select_objects`); for training counts
    n_min..n_max, n = n_max, the unnamed objects of a training scene with a non-empty conditioner number:

    - `all`: every object named, so 0 unnamed: exactly the k requested objects, at every k. E.2 counts
      "exactly k objects" within the trained counts; beyond them a drawn object the conditioner does not name
      was never seen in training either, so the rule stays exact (location and colour alike).
    - `single`: 1 of m objects named, m in the trained counts: up to n - 1 unnamed. The paper writes the
      expected behaviour as "an object at each conditioned location, plus 0-2 extra objects" for 1-3 objects
      (Section 2), so 0..n-1 extras at every k (also when n_min > 1: the paper's generous lower bound).
    - `random`: L ~ U{1..m} of m objects named (at least one), so m - L in 0..m-1 unnamed: 0..n-1 extras,
      like `single`. Ambiguous: the scenes with exactly L = k named objects had only 0..n-k unnamed ones, a
      stricter per-k reading (0 extras for k >= n); we take the reading of the paper's "1+(0-2)" notation,
      0..n-1 extras at every k, which is also the generous one E.2 asks for ("intentionally generous").
    - `drop_one`: m - 1 of m objects named, so exactly 1 unnamed in every scene (a 1-object scene has an
      empty conditioner and its one object unnamed): exactly one extra object, i.e. k + 1 objects, at every k.
      Trained on 1-object scenes only, no conditioner ever named an object: refused.
    """

    kind: str  # location | color
    trained_counts: tuple[int, ...]  # object counts of the training data, e.g. (1, 2, 3)
    label_mode: str = "all"  # conditioning.LABEL_MODES: all (Exp. 1, colour) | single (Exp. 2/3) | random | drop_one

    def __post_init__(self) -> None:
        if self.kind not in ("location", "color"):
            raise ValueError(f"kind must be 'location' or 'color', got {self.kind!r}")
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of the training label modes {LABEL_MODES}, "
                             f"got {self.label_mode!r}")
        if not self.trained_counts or min(self.trained_counts) < 1:
            raise ValueError(f"trained_counts must list positive object counts, got {self.trained_counts!r}")
        if self.label_mode == "drop_one" and self.n == 1:
            raise ValueError("label_mode 'drop_one' on 1-object scenes names no object (every conditioner is "
                             "empty): the model never saw a conditioned object, so there is no length-"
                             "generalization rule; train on counts with at least 2 objects")

    @property
    def n(self) -> int:
        return max(self.trained_counts)

    def extra_range(self, k: int) -> tuple[int, int]:
        """(fewest, most) unrequested objects a success may have at k (the same at every k; class docstring)."""
        # E.2: the extras a training scene showed beside its named objects (select_objects)
        if self.label_mode == "all":
            return 0, 0  # every object named
        if self.label_mode == "drop_one":
            return 1, 1  # all but one named: one unnamed object in every scene
        return 0, self.n - 1  # single (1 named), random (1..m of m named): "k+(0-(n-1))"

    def success(self, k: int, missing: int, extra: int) -> bool:
        fewest, most = self.extra_range(k)
        return missing == 0 and fewest <= extra <= most

    def extras_notation(self) -> str:
        """The extras as the paper appends them to k: "" (none), "+(0-2)", "+1"."""
        fewest, most = self.extra_range(1)
        if most == 0:
            return ""
        return f"+{most}" if fewest == most else f"+({fewest}-{most})"

    def describe(self) -> str:
        where = "at its location" if self.kind == "location" else "of its colour"
        if self.label_mode == "all":
            return (f"exactly the requested objects, each {where}, and no other object, at every k (all-label "
                    f"training: every object of a training scene was named)")
        if self.label_mode == "drop_one":
            return (f"every requested object present ({where}) plus exactly 1 extra object, at every k (drop-one "
                    f"training on up to {self.n} objects: all but one object named, one unnamed in every scene)")
        how = "one object named" if self.label_mode == "single" else "a random number 1..m of the m objects named"
        return (f"every requested object present ({where}) plus 0-{self.n - 1} extra objects, at every k "
                f"({self.label_mode}-label training on up to {self.n} objects: {how}, up to {self.n - 1} unnamed)")


# --- aggregation -------------------------------------------------------------------------------------


@dataclass
class LengthGenTally:
    """Per-k counts of a length-generalization run; counts add across batches and processes (`merge`)."""

    samples: dict[int, int] = field(default_factory=dict)
    successes: dict[int, int] = field(default_factory=dict)
    missing: dict[int, int] = field(default_factory=dict)
    extra: dict[int, int] = field(default_factory=dict)
    detected: dict[int, int] = field(default_factory=dict)
    histogram: dict[int, Counter] = field(default_factory=dict)

    def add(self, k: int, match: Mapping[str, int], rule: SuccessRule) -> bool:
        """Record one judged sample with k requested objects; returns whether it succeeded."""
        ok = rule.success(k, int(match["missing"]), int(match["extra"]))
        for table, value in ((self.samples, 1), (self.successes, int(ok)), (self.missing, match["missing"]),
                             (self.extra, match["extra"]), (self.detected, match["detected"])):
            table[k] = table.get(k, 0) + int(value)
        self.histogram.setdefault(k, Counter())[int(match["detected"])] += 1
        return ok

    def merge(self, other: LengthGenTally) -> LengthGenTally:
        for name in ("samples", "successes", "missing", "extra", "detected"):
            mine, theirs = getattr(self, name), getattr(other, name)
            for k, value in theirs.items():
                mine[k] = mine.get(k, 0) + value
        for k, counts in other.histogram.items():
            self.histogram.setdefault(k, Counter()).update(counts)
        return self

    def summarize(self) -> dict:
        """The row of lengthgen.json: per-k rates and k_max (paper rule) / k_max_strict."""
        per_k = {}
        for k in sorted(self.samples):
            n = self.samples[k]
            per_k[str(k)] = {
                "samples": n,
                "successes": self.successes[k],
                "success_rate": self.successes[k] / n,
                "mean_missing": self.missing[k] / n,
                "mean_extra": self.extra[k] / n,
                "mean_detected": self.detected[k] / n,
                "count_histogram": {str(c): v for c, v in sorted(self.histogram[k].items())},
            }
        rates = {int(k): row["success_rate"] for k, row in per_k.items()}
        return {"k_max": k_max(rates, K_MAX_THRESHOLD), "k_max_strict": k_max(rates, K_MAX_STRICT_THRESHOLD),
                "per_k": per_k}


def k_max(success_rates: Mapping[int, float], threshold: float = K_MAX_THRESHOLD) -> int:
    """Largest k with success rate > threshold for every k' <= k, counting up from k = 1 (E.2); 0 if k=1 fails.

    A k that was not evaluated ends the run (nothing is assumed about it).
    """
    best = 0
    k = 1
    while k in success_rates and success_rates[k] > threshold:
        best = k
        k += 1
    return best


def lengthgen_report(protocol: Mapping, rows: Mapping[str, LengthGenTally]) -> dict:
    """The lengthgen.json document (module docstring) from the protocol settings and one tally per row."""
    return {"protocol": dict(protocol), "rows": {name: tally.summarize() for name, tally in rows.items()}}


def table_row(name: str, report: Mapping) -> str:
    """A Table-1-style markdown row: `| name | model k_max (strict) | oracle k_max (strict) |`."""
    rows = report["rows"]
    rule = report["protocol"]

    try:  # the extras the success rule allows, in the paper's notation ("9+(0-2)")
        extra = SuccessRule(rule["kind"], tuple(rule["trained_counts"]), rule["label_mode"]).extras_notation()
    except (KeyError, TypeError, ValueError):  # a report without (valid) training settings: no extras shown
        extra = ""

    def cell(row: Mapping) -> str:
        return f"{row['k_max']}{extra} (strict {row['k_max_strict']})"

    cells = [cell(rows[r]) if r in rows else "-" for r in ("model", "oracle")]
    return f"| {name} | {cells[0]} | {cells[1]} |"


TABLE_HEADER = "| model | k_max (paper rule, >25%) | oracle (judge on Blender renders) |\n|---|---|---|"


# --- one protocol run: requests, oracle layouts, judging, figures --------------------------------------


def protocol_requests(
    kind: str,  # location | color
    ks: Sequence[int],  # numbers of requested objects
    samples_per_k: int,  # samples per k
    order: str = "paper",  # location requests: paper prefix or random k-subsets (a new subset per sample)
    seed: int = 0,  # seeds the random subsets
) -> list[dict]:
    """One request per sample: `{"k", "locations"}` ((x, y) fractions) or `{"k", "colors"}`, grouped by k."""
    generator = torch.Generator().manual_seed(seed)
    requests = []
    for k in ks:
        for _ in range(samples_per_k):
            if kind == "location":
                requests.append({"k": k, "locations": requested_locations(k, order, generator)})
            elif kind == "color":
                requests.append({"k": k, "colors": requested_colors(k)})
            else:
                raise ValueError(f"kind must be 'location' or 'color', got {kind!r}")
    return requests


def crowding(requests: Sequence[Mapping], resolution: int) -> dict[str, float]:
    """Per k, the mean over a protocol's location requests of the smallest distance (pixels) between two
    requested locations: random k-subsets of the paper's 12 are more crowded than its prefixes, and objects
    closer than about one object width merge. k = 1 and colour requests have no pair and are left out."""
    smallest: dict[int, list[float]] = {}
    for request in requests:
        if "locations" not in request or len(request["locations"]) < 2:
            continue
        points = fractions_to_pixels(request["locations"], resolution)
        gaps = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
        gaps[np.diag_indices(len(points))] = np.inf
        smallest.setdefault(request["k"], []).append(float(gaps.min()))
    return {str(k): round(float(np.mean(values)), 3) for k, values in sorted(smallest.items())}


def request_conditioner(request: Mapping, grid_size: int) -> torch.Tensor:
    """The conditioner a request names: `[G, G]` location grid or `[8]` colour counts (conditioning.py)."""
    from lcsbench.data.conditioning import counts_from_colors, grid_from_locations

    if "locations" in request:
        return grid_from_locations(request["locations"], grid_size)
    return counts_from_colors(request["colors"])


def oracle_scene(
    request: Mapping,  # a protocol request
    resolution: int,  # image size in pixels
    grid_size: int | None = None,  # the cell rule: place each object inside its requested cell of this grid
    generator: torch.Generator | None = None,  # draws the points inside the cells (required with grid_size)
) -> list[dict]:
    """The render_layouts scene of a request: objects at the requested pixels or, under the cell rule (a grid
    size given), each at a uniformly random point inside its requested cell, as training renders place
    objects, so that the oracle row measures the judge under the model's own geometry. A colour request puts its
    k objects at the first k paper locations (colours as requested). Objects are small: the paper's locations
    lie 0.1 image widths apart, where large CLEVR objects intersect and hide each other from k ~ 9 on, and
    the oracle row should measure the judge, not a physically impossible layout. Other attributes random."""
    if "locations" in request:
        if grid_size is None:
            points = fractions_to_pixels(request["locations"], resolution)
        else:
            if generator is None:
                raise ValueError("oracle_scene with grid_size draws points inside cells: pass generator=")
            cell = resolution / grid_size
            corners = cell_centres_pixels(request["locations"], grid_size, resolution) - cell / 2
            points = corners + torch.rand(len(corners), 2, generator=generator, dtype=torch.float64).numpy() * cell
        return [{"pixel": [float(x), float(y)], "size": "small"} for x, y in points]
    return [{"pixel": [float(x * resolution), float(y * resolution)], "color": color, "size": "small"}
            for (x, y), color in zip(PAPER_LOCATIONS, request["colors"])]


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


def plot_success_curves(report: Mapping, path=None, title: str = "length generalization"):
    """Success rate vs k, one line per row (model beside oracle), with the 25% / 50% k_max thresholds."""
    from matplotlib.figure import Figure  # object API: no pyplot state, no backend switch

    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    styles = {"model": ("tab:blue", "o"), "oracle": ("tab:gray", "s")}
    for name, row in report["rows"].items():
        ks = [int(k) for k in row["per_k"]]
        rates = [row["per_k"][str(k)]["success_rate"] for k in ks]
        color, marker = styles.get(name, (None, "^"))
        ax.plot(ks, rates, marker=marker, color=color, label=f"{name} (k_max {row['k_max']}, strict {row['k_max_strict']})")
    ax.axhline(K_MAX_THRESHOLD, color="tab:red", lw=0.8, ls="--")
    ax.axhline(K_MAX_STRICT_THRESHOLD, color="tab:orange", lw=0.8, ls=":")
    ax.set_xlabel("k (requested objects)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def detection_grid(
    images: np.ndarray,  # [N, H, W, 3] uint8
    requests: Sequence[Mapping],  # their protocol requests
    detections: Sequence[Mapping],  # their judge outputs
    grid_size: int = 16,  # conditioning grid G (the matching tolerance is one of its cells)
    scale: int = 4,  # upscaling so the marks are visible
    columns: int | None = None,  # tiles per row; default: a square grid
    tolerance_cells: float = 1.0,  # the matching of the report the grid illustrates
    match: str = "cell",
):
    """A PIL image: the samples tiled, requested centres as green crosses (and, under the cell rule, the
    requested cells as green squares), detections as circles (yellow when matched to a request, red when
    extra; colour requests: circles only)."""
    from PIL import Image, ImageDraw

    n, h, w, _ = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    tile_w, tile_h = w * scale, h * scale
    canvas = Image.new("RGB", (columns * (tile_w + 2) + 2, rows * (tile_h + 2) + 2), "white")
    for i in range(n):
        r, c = divmod(i, columns)
        left, top = 2 + c * (tile_w + 2), 2 + r * (tile_h + 2)
        canvas.paste(Image.fromarray(images[i]).resize((tile_w, tile_h), Image.NEAREST), (left, top))
        draw = ImageDraw.Draw(canvas)
        request, detection = requests[i], detections[i]
        matched = set()
        if "locations" in request:
            pairs = judge_request(request, detection, w, grid_size, tolerance_cells, match)["pairs"]
            matched = {d for _, d in pairs}
            for x, y in request["locations"]:
                px, py = left + x * tile_w, top + y * tile_h
                if match == "cell":
                    cx, cy = cell_centres_pixels([(x, y)], grid_size, w)[0] * scale
                    half = scale * w / grid_size / 2
                    draw.rectangle([left + cx - half, top + cy - half, left + cx + half, top + cy + half],
                                   outline=(0, 160, 0))
                draw.line([(px - 3, py), (px + 3, py)], fill=(0, 255, 0))
                draw.line([(px, py - 3), (px, py + 3)], fill=(0, 255, 0))
        centres = detection["centres"]
        for j, (x, y) in enumerate(np.asarray(centres).reshape(-1, 2).tolist()):
            px, py = left + x * scale, top + y * scale
            color = (255, 220, 0) if (j in matched or "locations" not in request) else (255, 0, 0)
            draw.ellipse([px - 5, py - 5, px + 5, py + 5], outline=color)
    return canvas


def sample_requests(
    denoiser,  # denoiser(x, sigma, cond) -> D(x) (a model's `.denoiser`)
    requests: Sequence[Mapping],  # protocol requests
    grid_size: int,  # conditioning grid G of the model
    shape: tuple[int, int, int],  # (C, H, W) of one image
    num_steps: int = 32,  # Heun steps (the paper's sampler, E.1)
    batch: int = 64,  # images per sampler call
    seed: int = 0,  # noise seed
    device: torch.device | str = "cpu",
    progress=None,  # called with (done, total) after each batch
) -> np.ndarray:
    """Sample one image per request with the EDM sampler; `uint8 [N, H, W, 3]`."""
    from lcsbench.diffusion.sampler import edm_sampler

    noise = torch.randn((len(requests), *shape), generator=torch.Generator().manual_seed(seed))
    conds = torch.stack([request_conditioner(r, grid_size) for r in requests])
    chunks = []
    for start in range(0, len(requests), batch):
        stop = start + batch
        chunks.append(edm_sampler(denoiser, noise[start:stop].to(device), conds[start:stop].to(device),
                                  num_steps=num_steps).float().cpu())
        if progress is not None:
            progress(min(stop, len(requests)), len(requests))
    return (torch.cat(chunks) * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_samples(path: str | Path, images: np.ndarray, settings: Mapping) -> None:
    """Keep a model row's samples (`uint8 [N, H, W, 3]`) with the settings that drew them, so the row can be
    judged again (another tolerance, another judge) without sampling again (`load_samples`)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(partial, images=images, settings=np.array(json.dumps(dict(settings), sort_keys=True)))
    partial.replace(path)  # a crash while writing leaves no half file under the real name


def load_samples(path: str | Path, settings: Mapping, shape: Sequence[int] | None = None) -> np.ndarray | None:
    """The samples saved at `path` if they were drawn with exactly `settings` (and, given `shape`, are uint8
    images of exactly that shape `[N, H, W, 3]`), else None (absent, unreadable, other settings or another shape:
    the caller samples again)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            if json.loads(str(saved["settings"])) != json.loads(json.dumps(dict(settings), sort_keys=True)):
                return None
            images = saved["images"]
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if shape is not None and (images.dtype != np.uint8 or tuple(images.shape) != tuple(shape)):
        return None
    return images


def judge_images(
    judge,  # anything with .detect(images [B, 3, H, W] in [-1, 1]) -> list of detections (models/judge.py)
    images: np.ndarray,  # uint8 [N, H, W, 3]
    requests: Sequence[Mapping],  # their protocol requests
    rule: SuccessRule,  # success rule of the trained model
    grid_size: int,  # conditioning grid G
    tolerance_cells: float = 1.0,
    batch: int = 64,
    device: torch.device | str = "cpu",
    match: str = "cell",  # cell | point (MATCH_RULES)
) -> tuple[LengthGenTally, list[dict]]:
    """Judge images against their requests: the tally and the per-image detections."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    detections: list[dict] = []
    for start in range(0, len(pixels), batch):
        detections += judge.detect(pixels[start:start + batch].to(device))
    tally = LengthGenTally()
    resolution = images.shape[2]
    for request, detection in zip(requests, detections):
        tally.add(request["k"], judge_request(request, detection, resolution, grid_size, tolerance_cells, match),
                  rule)
    return tally, detections
