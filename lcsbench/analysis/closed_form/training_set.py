"""The training distribution the closed-form denoisers are exact for: images, and the labels they are seen with.

A model trained on a render sees pairs (image, label grid). With label mode `all` every image has one label (the
grid of all its objects); with `single` the DataModule names one object drawn at random each time the image is
seen, so an image stands for several labelled *examples*, each with its probability. The closed forms integrate
over exactly that joint distribution of (x0, c):

    p(x0_i, c) = p(image i) * P(c | image i, label mode)

with p(image i) = 1 / (K * N_k) (the DataModule mixes its K object counts equally; N_k images of count k) and
P(c | i) from `label_distribution` (the label modes of data/conditioning.py, enumerated instead of drawn).

`TrainingSet` holds the images once and the examples as (label grid, image index, log probability).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lcsbench.data.conditioning import LABEL_MODES, location_grid

MAX_ENUMERATED_OBJECTS = 12  # label mode `random` enumerates every subset: 2^n - 1 of them


@dataclass(frozen=True)
class TrainingSet:
    """Training images and their labelled examples (module docstring)."""

    images: Tensor       # [N, C, H, W] float in [-1, 1] (the DataModule's scaling)
    labels: Tensor       # [E, G, G] long: the label grid of each example
    image_index: Tensor  # [E] long: the image each example shows
    log_weight: Tensor   # [E] float: log p(image, label) of each example; logsumexp = 0

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"training images are [N, C, H, W]; found shape {tuple(self.images.shape)}")
        examples = self.labels.shape[0]
        if self.labels.ndim != 3 or self.labels.shape[1] != self.labels.shape[2]:
            raise ValueError(f"example labels are location grids [E, G, G]; found shape {tuple(self.labels.shape)}")
        if self.image_index.shape != (examples,) or self.log_weight.shape != (examples,):
            raise ValueError(f"{examples} example labels need image_index and log_weight of shape [{examples}]; "
                             f"found {tuple(self.image_index.shape)} and {tuple(self.log_weight.shape)}")
        if examples == 0:
            raise ValueError("a training set needs at least one example: the render holds no images for the "
                             "requested counts")
        if int(self.image_index.min()) < 0 or int(self.image_index.max()) >= self.images.shape[0]:
            raise ValueError(f"image_index must lie in 0..{self.images.shape[0] - 1}")

    @property
    def grid_size(self) -> int:
        return int(self.labels.shape[-1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def label_distribution(
    objects: Sequence[Mapping[str, Any]],  # one scene's objects (scene JSON records with pixel_coords)
    label_mode: str,                       # all | single | random | drop_one (data/conditioning.py)
    grid_size: int,                        # G
    width: int,                            # image width in pixels
    height: int,                           # image height in pixels
) -> list[tuple[Tensor, float]]:
    """Every label grid the DataModule can draw for this scene, with its probability (equal grids merged).

    The enumeration of data/conditioning.py's `select_objects`: all -> the whole scene; single -> each object
    with 1/n; drop_one -> all but each object with 1/n; random -> k ~ U{1..n}, then a uniform k-subset, so a
    subset of size k has probability 1 / (n * C(n, k)).
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}; found {label_mode!r}")
    objects = list(objects)
    n = len(objects)
    if label_mode == "all" or n == 0:
        chosen = [(objects, 1.0)]
    elif label_mode == "single":
        chosen = [([obj], 1.0 / n) for obj in objects]
    elif label_mode == "drop_one":
        chosen = [(objects[:i] + objects[i + 1:], 1.0 / n) for i in range(n)]
    else:
        if n > MAX_ENUMERATED_OBJECTS:
            raise ValueError(f"label mode 'random' enumerates all 2^n - 1 subsets of a scene's objects; a scene "
                             f"with {n} objects is beyond the {MAX_ENUMERATED_OBJECTS} this supports: use a render "
                             f"with fewer objects per image")
        chosen = [(list(subset), 1.0 / (n * math.comb(n, k)))
                  for k in range(1, n + 1) for subset in itertools.combinations(objects, k)]
    merged: dict[bytes, tuple[Tensor, float]] = {}
    for subset, probability in chosen:
        grid = location_grid(subset, grid_size, width=width, height=height)
        key = grid.numpy().tobytes()
        previous = merged.get(key)
        merged[key] = (grid, probability + (previous[1] if previous else 0.0))
    return list(merged.values())


def training_set(
    images: Tensor,                        # [N, C, H, W] in [-1, 1]
    scenes: Sequence[Mapping[str, Any]],   # the N scene records (objects, width, height)
    label_mode: str,                       # how the model saw labels: all | single | random | drop_one
    grid_size: int,                        # G
) -> TrainingSet:
    """The `TrainingSet` of a render's images and scenes: object counts mixed equally, labels enumerated."""
    if images.shape[0] != len(scenes):
        raise ValueError(f"{images.shape[0]} images but {len(scenes)} scene records: pass one scene per image")
    counts = [len(scene["objects"]) for scene in scenes]
    per_count = {count: counts.count(count) for count in set(counts)}
    labels, image_index, log_weight = [], [], []
    for index, scene in enumerate(scenes):
        log_prior = -math.log(len(per_count) * per_count[counts[index]])
        for grid, probability in label_distribution(scene["objects"], label_mode, grid_size,
                                                    int(scene["width"]), int(scene["height"])):
            labels.append(grid)
            image_index.append(index)
            log_weight.append(log_prior + math.log(probability))
    return TrainingSet(images=images, labels=torch.stack(labels), image_index=torch.tensor(image_index),
                       log_weight=torch.tensor(log_weight, dtype=images.dtype))
