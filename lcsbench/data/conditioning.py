"""Conditioners: the one place that knows their layouts (paper Appendix E.1, Table 2).

Two kinds, one attribute at a time (E.1):

- location: `LongTensor[G, G]`, the count of object centres per cell of a G x G grid over the image
  (G = 16 in every experiment). Indexed `grid[row, col]` like the image: row = y (down), col = x (right).
  Object centres are the scene JSON's `pixel_coords[0:2]` = (px, py), float pixels, origin top-left,
  pixel i covering [i, i+1); the centre falls in cell `(floor(py * G / H), floor(px * G / W))`.
- color: `LongTensor[8]`, the count of objects of each colour in `scenes.COLOR_NAMES` order
  (gray, red, blue, green, brown, purple, cyan, yellow).

Label modes choose which of a scene's objects the conditioner names (E.1, Table 2):
`all` (every object; Exp. 1), `single` (one object at random; Exp. 2/3), `random` (a random number
k ~ U{1..n} of objects, then a uniform subset of that size), `drop_one` (all but one at random; an
empty conditioner for a 1-object scene). Random modes draw from an explicit `torch.Generator`.

The network's label vector (`encode_label`) is the conditioner flattened and scaled to unit L2 norm, the
magnitude EDM2's label path expects (it multiplies labels by sqrt(label_dim) before a unit-RMS linear); an
empty conditioner is the zero vector, i.e. no label embedding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lcsbench.data.scenes import COLOR_NAMES, DEFAULT_GRID_SIZE  # noqa: F401 (re-exported: the grid G of E.1)
from lcsbench.nn.edm2 import scale_label

KINDS: tuple[str, ...] = ("location", "color")
LABEL_MODES: tuple[str, ...] = ("all", "single", "random", "drop_one")

# The 12 evaluation locations of Appendix E.1, in the paper's order, as (x, y) fractions of the image:
# x = column (left -> right), y = row (top -> bottom), the order of the scene JSON's pixel_coords
# (px, py). The paper does not say which coordinate is which; its set is symmetric under swapping x
# and y (every (a, b) has its (b, a)), so the choice changes only the order in which a length-k prefix
# adds locations, not the set of 12. We follow the data's own (x, y) convention.
PAPER_LOCATIONS: tuple[tuple[float, float], ...] = (
    (0.65, 0.65), (0.65, 0.25), (0.25, 0.65), (0.35, 0.35), (0.45, 0.65), (0.45, 0.25),
    (0.65, 0.45), (0.25, 0.45), (0.45, 0.45), (0.55, 0.55), (0.35, 0.55), (0.55, 0.35),
)
# The 8 evaluation colours of Appendix E.1, in the paper's (alphabetical) order; a length-k prefix is
# what a k-colour evaluation conditions on. Conditioner slots follow COLOR_NAMES, not this order.
PAPER_COLORS: tuple[str, ...] = ("blue", "brown", "cyan", "gray", "green", "purple", "red", "yellow")

SceneOrObjects = Mapping[str, Any] | Sequence[Mapping[str, Any]]


# --- layout checks -------------------------------------------------------------------------------


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"conditioning kind must be one of {KINDS}, got {kind!r}")


def check_grid_size(grid_size: int, width: int, height: int) -> None:
    """Raise unless `grid_size` cells tile a `width` x `height` image exactly (E.1, E.3 patch cells)."""
    if grid_size < 1 or width % grid_size or height % grid_size:
        raise ValueError(
            f"grid_size {grid_size} does not divide the image size {width}x{height}: every grid cell must "
            f"cover whole pixels (the paper uses 16, i.e. {width // 16}-pixel cells at this size); pick a "
            f"grid size that divides the resolution"
        )


def label_dim(kind: str, grid_size: int = DEFAULT_GRID_SIZE) -> int:
    """Length of the network label vector for a conditioner kind (location: G*G, color: 8)."""
    check_kind(kind)
    return grid_size * grid_size if kind == "location" else len(COLOR_NAMES)


# --- conditioners from scene JSON ----------------------------------------------------------------


def _objects_and_size(
    scene_or_objects: SceneOrObjects, width: int | None, height: int | None
) -> tuple[list[Mapping[str, Any]], int | None, int | None]:
    if isinstance(scene_or_objects, Mapping):
        objects = list(scene_or_objects["objects"])
        width = scene_or_objects.get("width") if width is None else width
        height = scene_or_objects.get("height") if height is None else height
        return objects, width, height
    return list(scene_or_objects), width, height


def location_cell(x: float, y: float, grid_size: int = DEFAULT_GRID_SIZE) -> tuple[int, int]:
    """Grid cell `(row, col)` of a point given as (x, y) fractions of the image in [0, 1].

    A point on the far edge (fraction 1.0) belongs to the last cell.
    """
    col = min(max(math.floor(x * grid_size), 0), grid_size - 1)
    row = min(max(math.floor(y * grid_size), 0), grid_size - 1)
    return row, col


def location_grid(
    scene_or_objects: SceneOrObjects,
    grid_size: int = DEFAULT_GRID_SIZE,  # G: cells per side (E.1)
    width: int | None = None,  # image width in pixels; default: the scene's "width"
    height: int | None = None,  # image height in pixels; default: the scene's "height"
) -> torch.Tensor:
    """`LongTensor[G, G]`: count of object centres (`pixel_coords`) per grid cell, `grid[row=y, col=x]`.

    Takes a scene record (its `objects`, `width`, `height`) or a list of object records plus
    `width`/`height`. A centre projected just outside the image is counted in the nearest edge cell, so
    the grid always sums to the number of objects.
    """
    objects, width, height = _objects_and_size(scene_or_objects, width, height)
    if width is None or height is None:
        raise ValueError(
            "location_grid needs the image size: pass a scene record with 'width' and 'height', or "
            "width=... and height=... with a list of objects"
        )
    check_grid_size(grid_size, width, height)
    grid = torch.zeros(grid_size, grid_size, dtype=torch.long)
    for obj in objects:
        px, py = obj["pixel_coords"][0], obj["pixel_coords"][1]
        row, col = location_cell(px / width, py / height, grid_size)
        grid[row, col] += 1
    return grid


def color_counts(scene_or_objects: SceneOrObjects) -> torch.Tensor:
    """`LongTensor[8]`: number of objects of each colour, in `scenes.COLOR_NAMES` order."""
    objects, _, _ = _objects_and_size(scene_or_objects, None, None)
    counts = torch.zeros(len(COLOR_NAMES), dtype=torch.long)
    for obj in objects:
        counts[_color_index(obj["color"])] += 1
    return counts


def _color_index(name: str) -> int:
    try:
        return COLOR_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown CLEVR colour {name!r}: expected one of {COLOR_NAMES}") from None


def select_objects(
    objects: Sequence[Mapping[str, Any]],
    label_mode: str,  # all | single | random | drop_one (module docstring)
    generator: torch.Generator | None = None,  # required by the random modes
) -> list[Mapping[str, Any]]:
    """The objects a conditioner names under a label mode (E.1, Table 2), in their scene order."""
    objects = list(objects)
    n = len(objects)
    if label_mode == "all":
        return objects
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    if generator is None:
        raise ValueError(
            f"label_mode {label_mode!r} picks objects at random: pass an explicit "
            f"generator=torch.Generator().manual_seed(seed) so the choice is reproducible"
        )
    if n == 0:
        return []
    if label_mode == "single":
        keep_count = 1
    elif label_mode == "drop_one":
        keep_count = n - 1
    else:  # random: a random number of objects, uniform in 1..n, then a uniform subset of that size
        keep_count = int(torch.randint(1, n + 1, (), generator=generator))
    kept = torch.randperm(n, generator=generator)[:keep_count].sort().values
    return [objects[i] for i in kept.tolist()]


def scene_conditioner(
    scene: Mapping[str, Any],  # scene record (scenes.py)
    kind: str,  # location | color
    label_mode: str = "all",  # which objects it names (select_objects)
    grid_size: int = DEFAULT_GRID_SIZE,  # location grid cells per side
    generator: torch.Generator | None = None,  # required by the random label modes
) -> torch.Tensor:
    """The conditioner of one scene: `[G, G]` location grid or `[8]` colour counts of the chosen objects."""
    check_kind(kind)
    chosen = select_objects(scene["objects"], label_mode, generator)
    if kind == "location":
        return location_grid(chosen, grid_size, width=scene["width"], height=scene["height"])
    return color_counts(chosen)


# --- conditioners from requested locations / colours (evaluation, E.2) ------------------------------


def grid_from_locations(
    locations: Sequence[Sequence[float]],  # (x, y) fractions in [0, 1], e.g. PAPER_LOCATIONS[:k]
    grid_size: int = DEFAULT_GRID_SIZE,  # G
) -> torch.Tensor:
    """`LongTensor[G, G]` naming one object at each requested location (repeats add up)."""
    grid = torch.zeros(grid_size, grid_size, dtype=torch.long)
    for location in locations:
        if len(location) != 2 or not all(0.0 <= float(v) <= 1.0 for v in location):
            raise ValueError(
                f"a requested location is an (x, y) pair of image fractions in [0, 1], got {location!r}"
            )
        row, col = location_cell(float(location[0]), float(location[1]), grid_size)
        grid[row, col] += 1
    return grid


def counts_from_colors(colors: Sequence[str]) -> torch.Tensor:
    """`LongTensor[8]` naming one object of each requested colour (repeats add up), COLOR_NAMES order."""
    counts = torch.zeros(len(COLOR_NAMES), dtype=torch.long)
    for name in colors:
        counts[_color_index(name)] += 1
    return counts


# --- the network label vector (EDM2 label path, edm2-facts 3.3) --------------------------------------


def encode_label(cond: torch.Tensor, kind: str, label_scale: str = "counts") -> torch.Tensor:
    """Flatten a conditioner into the network label under `label_scale` (nn.edm2.scale_label, App. E.1).

    location: `[..., G, G]` -> `[..., G*G]`; color: `[..., 8]` -> `[..., 8]`; float32. `counts`: the counts as
    they are (one object gives EDM2's one-hot class label); `unit`: scaled to unit L2 norm, which keeps the label
    embedding at unit RMS whatever the object count. An empty conditioner maps to the zero vector.
    """
    check_kind(kind)
    if kind == "location":
        if cond.dim() < 2 or cond.shape[-1] != cond.shape[-2]:
            raise ValueError(f"a location conditioner is [..., G, G], got shape {tuple(cond.shape)}")
        flat = cond.reshape(*cond.shape[:-2], cond.shape[-1] * cond.shape[-2])
    else:
        if cond.dim() < 1 or cond.shape[-1] != len(COLOR_NAMES):
            raise ValueError(f"a color conditioner is [..., {len(COLOR_NAMES)}], got shape {tuple(cond.shape)}")
        flat = cond
    return scale_label(flat, label_scale)
