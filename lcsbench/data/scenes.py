"""CLEVR scene vocabulary and the per-image scene record that every other part reads.

The renderer's scene JSON is the single source of truth for labels (docs/architecture.md). One record per
image, in the CLEVR schema with lcsbench's extras:

    {"image_index": 17, "split": "train", "num_objects": 3, "width": 64, "height": 64,
     "objects": [{"shape": "cube", "size": "large", "material": "metal", "color": "red",
                  "3d_coords": [x, y, z],            # scene units, z = radius (object rests on z=0)
                  "rotation": 123.4,                # degrees, applied as degrees (CLEVR's quirk fixed)
                  "pixel_coords": [px, py, depth],  # float pixels, origin top-left, pixel i covers
                                                    # [i, i+1); depth in scene units
                  "visible_pixels": 211,            # pixels of this object in the instance mask
                  "mask_id": 1}, ...],              # value of this object in the mask PNG
     "directions": {...}, "relationships": {...}, "camera": {...}, "lights": [...],
     "layout_attempts": 2, "scene_seed": "0/n3/train/17", "renderer": {...}}

Instance masks are 8-bit grayscale PNGs: 0 = background, `mask_id` = that object.
"""

from __future__ import annotations

from collections.abc import Sequence

# CLEVR's palette (properties.json), 0-255 sRGB-coded values used directly as linear RGB, as CLEVR
# does. This order is lcsbench's one colour order: colour-count conditioners index it.
COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
DEFAULT_GRID_SIZE = 16  # the location grid G (E.1: "We take grid_size=16 in all experiments")
SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder")
MATERIALS: tuple[str, ...] = ("rubber", "metal")
SIZES: dict[str, float] = {"large": 0.7, "small": 0.35}  # half-extent in scene units

# Sample layout inside a shard: `<key>.png` (RGB image), `<key>.json` (scene record above),
# `<key>.mask.png` (instance mask). Keys contain no dots (WebDataset splits at the first dot).
IMAGE_EXT, SCENE_EXT, MASK_EXT = "png", "json", "mask.png"


def sample_key(num_objects: int | None, split: str, index: int) -> str:
    """The WebDataset key of one rendered image, e.g. `n3_train_00000017`."""
    prefix = "layout" if num_objects is None else f"n{num_objects}"
    return f"{prefix}_{split}_{index:08d}" if num_objects is not None else f"{prefix}_{index:08d}"


COUNTS_LIMIT = 10_000_000  # a wider range of object counts is refused before it is built in memory


def parse_counts(counts: str | int | Sequence[int]) -> tuple[int, ...]:
    """'1-3' -> (1, 2, 3); '1,2,5' -> (1, 2, 5); 4 -> (4,); [1, 3] -> (1, 3)."""
    if isinstance(counts, int):
        parts = [counts]
    elif isinstance(counts, str):
        parts = []
        try:
            for part in counts.split(","):
                low, _, high = part.strip().partition("-")
                low, high = int(low), int(high or low)
                if high - low >= COUNTS_LIMIT:  # refuse before building a huge range in memory
                    raise ValueError
                parts.extend(range(low, high + 1))
        except ValueError:
            parts = []
    else:
        parts = [int(c) for c in counts]
    if not parts or min(parts) < 1 or len(set(parts)) != len(parts):
        raise ValueError(f"invalid object counts {counts!r}: expected a range like '1-3', a list like '1,2,5' "
                         f"or a list of distinct positive integers")
    return tuple(sorted(parts))


def cell_centre(row: int, col: int, grid_size: int) -> tuple[float, float]:
    """Centre of cell (row, col) of a G x G location grid as (x, y) fractions of the image (the one cell-centre
    helper: layouts, locality targets and conditioners all place a cell's object here)."""
    return (col + 0.5) / grid_size, (row + 0.5) / grid_size
