"""Requested scenes for `lcsbench render --layout FILE`: objects at given image positions.

A layout file is JSON, either a list of scenes or `{"grid_size": 16, "scenes": [...]}`; a scene is
a list of objects (or `{"objects": [...]}`). Each object gives its position in exactly one way:

    {"pixel": [x, y]}     float pixels at the render resolution, origin top-left, x right, y down
    {"frac": [x, y]}      fractions of the image width and height in [0, 1]
    {"grid": [row, col]}  the centre of a cell of the G x G conditioning grid

plus optional `color`, `shape`, `size`, `material` (drawn at random when absent).
"""

from __future__ import annotations

import json
from pathlib import Path

from lcsbench.data.scenes import COLOR_NAMES, DEFAULT_GRID_SIZE, MATERIALS, SHAPES, SIZES, cell_centre

POSITION_KEYS = ("pixel", "frac", "grid")
ATTRIBUTES = {"color": COLOR_NAMES, "shape": SHAPES, "size": tuple(SIZES), "material": MATERIALS}


class LayoutError(ValueError):
    """A layout file or scene does not follow the documented format."""


def object_to_pixel(spec: dict, resolution: int, grid_size: int, where: str) -> dict:
    """One requested object with its position converted to float pixels."""
    if not isinstance(spec, dict):
        raise LayoutError(f"{where}: an object is a JSON object such as {{\"grid\": [row, col]}}, got {spec!r}")
    unknown = set(spec) - set(POSITION_KEYS) - set(ATTRIBUTES)
    if unknown:
        raise LayoutError(f"{where}: unknown keys {sorted(unknown)}; allowed: "
                          f"{list(POSITION_KEYS) + list(ATTRIBUTES)}")
    given = [k for k in POSITION_KEYS if k in spec]
    if len(given) != 1:
        raise LayoutError(f"{where}: give the position with exactly one of {list(POSITION_KEYS)}, got {given}")
    kind = given[0]
    try:
        a, b = (float(v) for v in spec[kind])
    except (TypeError, ValueError):
        raise LayoutError(f"{where}: {kind} must be a pair of numbers, got {spec[kind]!r}") from None
    if kind == "pixel":
        x, y = a, b
    elif kind == "frac":
        x, y = a * resolution, b * resolution
    else:
        if resolution % grid_size:
            raise LayoutError(f"grid size {grid_size} does not divide the resolution {resolution}")
        row, col = a, b
        if not (0 <= row < grid_size and 0 <= col < grid_size):
            raise LayoutError(f"{where}: grid cell {spec[kind]} outside the {grid_size}x{grid_size} grid")
        x, y = (fraction * resolution for fraction in cell_centre(row, col, grid_size))
    if not (0 <= x < resolution and 0 <= y < resolution):
        raise LayoutError(f"{where}: position {spec[kind]} ({kind}) falls outside the {resolution}x{resolution} image")
    result = {"pixel": [x, y]}
    for name, allowed in ATTRIBUTES.items():
        if name in spec:
            if spec[name] not in allowed:
                raise LayoutError(f"{where}: {name} {spec[name]!r} is not one of {list(allowed)}")
            result[name] = spec[name]
    return result


def normalize_scenes(scenes: list, resolution: int, grid_size: int = DEFAULT_GRID_SIZE) -> list[list[dict]]:
    if not isinstance(scenes, list) or not scenes:
        raise LayoutError("a layout needs a non-empty list of scenes")
    result = []
    for i, scene in enumerate(scenes):
        objects = scene.get("objects") if isinstance(scene, dict) else scene
        if not isinstance(objects, list) or not objects:
            raise LayoutError(f"scene {i}: expected a non-empty list of objects (or {{'objects': [...]}})")
        result.append([object_to_pixel(obj, resolution, grid_size, f"scene {i}, object {j}")
                       for j, obj in enumerate(objects)])
    return result


def load_layout_file(path: str | Path, resolution: int) -> list[list[dict]]:
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise LayoutError(f"cannot read layout file {path}: {error}") from error
    if isinstance(payload, dict):
        grid_size = payload.get("grid_size", DEFAULT_GRID_SIZE)
        if not isinstance(grid_size, int) or isinstance(grid_size, bool) or grid_size < 1:
            raise LayoutError(f"{path}: grid_size must be a whole number of cells per side >= 1 (e.g. 16); found "
                              f"{grid_size!r}")
        return normalize_scenes(payload.get("scenes"), resolution, grid_size)
    return normalize_scenes(payload, resolution)
