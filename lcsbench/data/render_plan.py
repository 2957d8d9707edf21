"""The plan of a render: its settings, and which images go into which shard (a pure function of the settings).

Object count n, split and shard index fix the images of every shard (`ROOT/n3/train-000000.tar`), and each
image's scene depends only on `(seed, n, split, index)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lcsbench.data.scenes import COLORS, MATERIALS, SHAPES, SIZES

STAGING = ".staging"  # ROOT/.staging/<group>/<split>-NNNNNN/: images of a shard not yet packed
# Object counts per image stop at 12: CLEVR's placement rules (min_dist 0.25, margin 0.4 on its 6x6 ground)
# place 12 objects in about 1 of 2,000 random layouts and 13 in fewer than 1 of 100,000 (measured), so 13
# would cost minutes of search per image; CLEVR itself stops at 10 and the paper's length generalization at 12.
MAX_OBJECTS = 12


@dataclass(frozen=True)
class RenderSettings:
    """Everything that determines the pixels and labels of a dataset (recorded in the manifest)."""

    resolution: int = 64  # square images, pixels
    samples: int = 64  # Cycles samples per pixel
    seed: int = 0  # dataset seed: scene of image i = f(seed, n, split, i)
    counts: tuple[int, ...] = (1, 2, 3)  # object counts, one shard set each
    per_count: int = 1000  # training images per object count
    val_per_count: int = 0  # held-out images per object count
    shard_size: int = 1000  # images per shard
    fov: str = "crop"  # "crop": CLEVR's vertical FOV (square = centre crop); "full": horizontal FOV
    min_dist: float = 0.25  # CLEVR: min gap between objects on the ground (scene units)
    margin: float = 0.4  # CLEVR: min separation along left/right/front/behind
    min_visible_fraction: float = 0.0026  # visible pixels per object / image (200 px at 320x240)
    max_retries: int = 50  # CLEVR: placements per object before the layout restarts
    max_layout_attempts: int = 500  # layouts tried before giving up on the in-frame/visibility checks
    camera_jitter: float = 0.5  # CLEVR: uniform +-jitter per axis of the camera position
    light_jitter: float = 1.0  # CLEVR: uniform +-jitter per axis of each area light
    layout_sha256: str | None = None  # layout mode: hash of the requested scenes

    def __post_init__(self) -> None:
        """Placement numbers must be finite and in range: NaN compares false, so `--min-dist nan` would let
        objects intersect and write NaN into the manifest (issue 25 item 6)."""
        ranges = {"min_dist": (0, math.inf), "margin": (0, math.inf), "min_visible_fraction": (0, 1),
                  "camera_jitter": (0, math.inf), "light_jitter": (0, math.inf)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value < high):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number in [{low}, {high}); found "
                                 f"{value!r} (the default is {getattr(RenderSettings, name)})")

    def scene_script_settings(self) -> dict:
        return {
            "width": self.resolution, "height": self.resolution, "samples": self.samples,
            "fov": self.fov, "min_dist": self.min_dist, "margin": self.margin,
            "min_visible_fraction": self.min_visible_fraction, "max_retries": self.max_retries,
            "max_layout_attempts": self.max_layout_attempts, "camera_jitter": self.camera_jitter,
            "light_jitter": self.light_jitter,
            # CLEVR's vocabulary, from its one source (scenes.py): Blender's Python cannot import lcsbench
            "colors": COLORS, "shapes": list(SHAPES), "materials": list(MATERIALS), "sizes": SIZES,
        }


@dataclass
class ShardPlan:
    """One shard: where it goes and the Blender job of each of its images."""

    group: str  # "n3", or "layout"
    split: str  # "train", "val", or "eval" for layouts
    index: int
    jobs: list[dict] = field(default_factory=list)

    @property
    def relpath(self) -> str:
        return f"{self.group}/{self.split}-{self.index:06d}.tar"

    @property
    def staging(self) -> str:
        return f"{STAGING}/{self.group}/{self.split}-{self.index:06d}"


# ---- planning -----------------------------------------------------------------------------------


def parse_shard_range(text: str) -> slice:
    """'i:j' -> slice(i, j) over the dataset's ordered shard list."""
    try:
        start, _, stop = text.partition(":")
        return slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise ValueError(f"invalid --shards {text!r}: expected 'i:j' (shard indices, j exclusive)") from None


def plan_dataset(settings: RenderSettings) -> list[ShardPlan]:
    plans: list[ShardPlan] = []
    for count in settings.counts:
        group = f"n{count}"
        for split, total in (("train", settings.per_count), ("val", settings.val_per_count)):
            for shard_index in range(math.ceil(total / settings.shard_size)):
                plan = ShardPlan(group, split, shard_index)
                for index in range(shard_index * settings.shard_size,
                                   min(total, (shard_index + 1) * settings.shard_size)):
                    plan.jobs.append({
                        "key": f"{group}_{split}_{index:08d}", "num_objects": count, "split": split,
                        "image_index": index, "scene_seed": f"{settings.seed}/{group}/{split}/{index}",
                    })
                plans.append(plan)
    return plans


def plan_layouts(settings: RenderSettings, scenes: list[list[dict]]) -> list[ShardPlan]:
    plans: list[ShardPlan] = []
    for shard_index in range(math.ceil(len(scenes) / settings.shard_size)):
        plan = ShardPlan("layout", "eval", shard_index)
        for index in range(shard_index * settings.shard_size,
                           min(len(scenes), (shard_index + 1) * settings.shard_size)):
            plan.jobs.append({
                "key": f"layout_eval_{index:08d}", "layout": scenes[index], "split": "eval",
                "image_index": index, "scene_seed": f"{settings.seed}/layout/eval/{index}",
            })
        plans.append(plan)
    return plans


def select_shards(plans: list[ShardPlan], shards: slice | None, node_rank: int, num_nodes: int) -> list[ShardPlan]:
    """This machine's part: a slice of the ordered shard list, then every num_nodes-th shard."""
    if num_nodes < 1 or not 0 <= node_rank < num_nodes:
        raise ValueError(f"node rank {node_rank} is not in [0, {num_nodes}): pass --node-rank in "
                         f"0..num_nodes-1 (SLURM: $SLURM_ARRAY_TASK_ID) and --num-nodes >= 1")
    selected = plans[shards] if shards is not None else plans
    return selected[node_rank::num_nodes]
