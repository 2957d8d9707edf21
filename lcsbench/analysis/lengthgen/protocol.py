"""Length-generalization protocol, part 1: what is asked (paper Section 2, Appendix E.1, E.2).

The requests per k (`requested_locations`, `requested_colors`, `protocol_requests`), the conditioners and oracle
scenes they name, the success rule of the trained model (`SuccessRule`) and the settings of one study
(`LengthGenProtocol`). The package docstring (`lcsbench.analysis.lengthgen`) tells the whole protocol.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lcsbench.data.conditioning import LABEL_MODES, PAPER_COLORS, PAPER_LOCATIONS
from lcsbench.diffusion.sampler import PAPER_HEUN_STEPS

MATCH_RULES = ("cell", "point")  # where a requested location counts as hit (package docstring, item 2)


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


# --- the requests of one protocol run, and the oracle layouts they name ---------------------------------


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



# --- the settings of one study ------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthGenProtocol:
    """What one length-generalization study asks and how it judges (the package docstring): `study.run` takes it.

    Bad settings are refused here, before anything is sampled or rendered, with the messages of the functions
    that would refuse them later (`requested_locations`, `check_tolerance`, ...).
    """

    rule: SuccessRule  # the success rule of the trained model; its kind is the protocol's
    ks: tuple[int, ...] | None = None  # numbers of requested objects; None: 1..12 (location) / 1..8 (colour)
    samples_per_k: int = 32  # samples per k (the paper counts 8 by eye)
    order: str = "paper"  # location requests: the paper's prefixes or random k-subsets (a new one per sample)
    match: str = "cell"  # cell | point (MATCH_RULES)
    tolerance_cells: float = 1.0  # a detection matches a request at most this many grid cells away
    grid_size: int | None = None  # conditioning grid G; None: the denoiser's
    num_steps: int = PAPER_HEUN_STEPS  # Heun steps (the paper's sampler, E.1)
    seed: int = 0  # noise, random subsets and oracle placement

    def __post_init__(self) -> None:
        ks = self.ks or range(1, 1 + len(PAPER_LOCATIONS if self.kind == "location" else PAPER_COLORS))
        object.__setattr__(self, "ks", tuple(int(k) for k in ks))
        if self.samples_per_k < 1 or self.num_steps < 2:
            raise ValueError(f"a length-generalization protocol needs samples_per_k >= 1 and num_steps >= 2 (Heun); "
                             f"got {self.samples_per_k}, {self.num_steps}")
        if self.order not in ("paper", "random"):
            raise ValueError(f"order must be 'paper' or 'random', got {self.order!r}")
        check_tolerance(self.tolerance_cells)
        check_match_rule(self.match)
        for k in self.ks:  # a k beyond the paper's lists is refused now, not after the oracle render
            requested_locations(k) if self.kind == "location" else requested_colors(k)

    @property
    def kind(self) -> str:
        return self.rule.kind

    def requests(self) -> list[dict]:
        """One request per sample, grouped by k (`protocol_requests`)."""
        return protocol_requests(self.kind, self.ks, self.samples_per_k, self.order, self.seed)
