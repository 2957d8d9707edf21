"""Render CLEVR datasets with Blender into WebDataset shards, in parallel and resumably.

The plan of a dataset is a pure function of its settings (data/render_plan.py): object count n, split and shard
index fix the images of every shard (`ROOT/n3/train-000000.tar`), and each image's scene depends only on
`(seed, n, split, index)`. Work is split over one Blender process per core (data/render_pool.py), each rendering
a contiguous run of images (start-up costs ~0.6 s, so a process renders many). Images land in `ROOT/.staging/`
as they finish; a shard is packed (write, then rename) once all its images are there. Rerunning with the same
arguments skips finished shards and finished images, so a crashed or killed render loses at most the images in
flight. SIGTERM, SIGINT and SIGHUP stop every Blender process before the render exits (RenderInterrupted); where
util-linux's setpriv can, Blender is also started to die with the render process, so even SIGKILL leaves no
Blender behind (data/blender_binary.py). Each packed shard's sha256 goes into the manifest (data/manifest.py;
`--repair` and `--verify` check it). A render claims its shards in `ROOT/.locks/` (flock, data/locks.py), so a
second render of the same shards into the same directory is refused while the first runs; renders of disjoint
shards (`--shards`, `--node-rank`) share a directory.

This module runs a render end to end (`render_dataset`, `render_layouts`); the names other modules import from
it (RenderError, RenderInterrupted, RenderSettings, MAX_OBJECTS, parse_shard_range) are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

from lcsbench.data.blender_binary import find_blender, supported_blender_version, usable_cores
from lcsbench.data.locks import claim_shards
from lcsbench.data.manifest import reconcile_manifest, render_manifest
from lcsbench.data.render_errors import RenderError, RenderInterrupted  # noqa: F401 (re-exported)
from lcsbench.data.render_plan import (MAX_OBJECTS, STAGING, RenderSettings, ShardPlan,  # noqa: F401 (re-exported)
                                       parse_shard_range, plan_dataset, plan_layouts, select_shards)
from lcsbench.data.render_pool import MAX_IMAGES_PER_PROCESS, run_plans
from lcsbench.data.scenes import parse_counts
from lcsbench.data.shards import CHECKSUMS, MANIFEST, ShardError, check_shard, read_manifest_file, verify_shard


def set_aside(path: Path) -> Path:
    """Rename a damaged shard to `<name>.corrupt`, or `<name>.corrupt.2`, `.3`, ... if earlier ones exist."""
    target, number = path.with_name(path.name + ".corrupt"), 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.corrupt.{number}")
    os.replace(path, target)
    return target


def check_existing_shards(out: Path, plans: list[ShardPlan], repair: bool) -> list[ShardPlan]:
    """Check finished shards; return the plans still to render. A plain rerun checks their tar structure
    (fast); `repair` verifies them fully (checksum from the manifest where recorded, every member decodes),
    moves damaged ones aside as `*.corrupt` (numbered, nothing is deleted) and re-renders them. Without
    `repair`, damaged shards stop the run."""
    manifest = read_manifest_file(out / MANIFEST)
    checksums, resolution = manifest.get(CHECKSUMS, {}), manifest["settings"]["resolution"]
    fix = "rerun `lcsbench render` with --repair"
    todo, damaged = [], []
    for plan in plans:
        path = out / plan.relpath
        if not path.exists():
            todo.append(plan)
            continue
        try:
            if repair:
                verify_shard(path, len(plan.jobs), checksums.get(plan.relpath), fix, resolution=resolution)
            else:
                check_shard(path, len(plan.jobs), fix)
        except ShardError as error:
            if not repair:
                damaged.append(str(error))
                continue
            set_aside(path)
            todo.append(plan)
    if damaged:
        raise ShardError(f"{len(damaged)} finished shard(s) are damaged:\n  " + "\n  ".join(damaged)
                         + "\nRerun the same command with --repair: damaged shards are moved aside as "
                           "*.corrupt and only they are re-rendered.")
    return todo


def render(out: str | Path, settings: RenderSettings, plans: list[ShardPlan], mode: str, *,
           shards: slice | None = None, node_rank: int = 0, num_nodes: int = 1, workers: int | None = None,
           repair: bool = False, blender: str | None = None, progress: bool = True,
           images_per_process: int = MAX_IMAGES_PER_PROCESS) -> dict:
    out = Path(out)
    blender_path = find_blender(blender)
    workers = workers or usable_cores()
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    version = supported_blender_version(blender_path)
    out.mkdir(parents=True, exist_ok=True)
    reconcile_manifest(out, render_manifest(settings, plans, mode, version))
    mine = select_shards(plans, shards, node_rank, num_nodes)
    with claim_shards(out, mine):
        todo = check_existing_shards(out, mine, repair)
        rendered = run_plans(out, todo, settings, blender_path, workers, progress, tag=f"node{node_rank}",
                             images_per_process=images_per_process)
        complete = sum((out / plan.relpath).exists() for plan in plans)
        if complete == len(plans):  # renders of other shards (other machines) may be cleaning up too
            shutil.rmtree(out / STAGING, ignore_errors=True)
    return {"out": str(out), "rendered_images": rendered, "selected_shards": len(mine),
            "complete_shards": complete, "total_shards": len(plans)}


def render_dataset(out: str | Path, counts=(1, 2, 3), per_count: int = 1000, val_per_count: int | None = None,
                   resolution: int = 64, samples: int = 64, seed: int = 0, shard_size: int = 1000,
                   **options) -> dict:
    """Render `per_count` training and `val_per_count` held-out images for every object count.

    `options`: RenderSettings placement fields (fov, min_dist, ...), and `shards`, `node_rank`,
    `num_nodes`, `workers`, `repair`, `blender`, `progress`, `images_per_process` of `render`.
    """
    counts = parse_counts(counts)
    if max(counts) > MAX_OBJECTS:
        raise ValueError(f"--counts asks for {max(counts)} objects per image; at most {MAX_OBJECTS} are supported: "
                         f"CLEVR's placement rules fit {MAX_OBJECTS} objects in about 1 of 2,000 random layouts and "
                         f"{MAX_OBJECTS + 1} in fewer than 1 of 100,000, so a scene of more would search for "
                         f"minutes. Pass counts in 1..{MAX_OBJECTS}, e.g. --counts 1-{MAX_OBJECTS}")
    if val_per_count is None:
        val_per_count = math.ceil(per_count / 50)
    if per_count < 1 or val_per_count < 0 or shard_size < 1 or resolution < 8 or samples < 1:
        raise ValueError(f"need per_count >= 1, val_per_count >= 0, shard_size >= 1, resolution >= 8 and "
                         f"samples >= 1; got {per_count}, {val_per_count}, {shard_size}, {resolution}, {samples}")
    setting_names = set(RenderSettings.__dataclass_fields__)
    settings = RenderSettings(resolution=resolution, samples=samples, seed=seed, counts=counts,
                              per_count=per_count, val_per_count=val_per_count, shard_size=shard_size,
                              **{k: v for k, v in options.items() if k in setting_names})
    run_options = {k: v for k, v in options.items() if k not in setting_names}
    return render(out, settings, plan_dataset(settings), "random", **run_options)


def render_layouts(out: str | Path, scenes: list[list[dict]], resolution: int = 64, samples: int = 64,
                   seed: int = 0, shard_size: int = 1000, **options) -> dict:
    """Render requested scenes exactly: each object centre projects to its requested pixel.

    `scenes`: one list of objects per image, each `{"pixel": [x, y]}` (float pixels at this
    resolution, origin top-left) with optional `color`, `shape`, `size`, `material`; see
    `lcsbench.data.layouts` for fractions and grid cells.
    """
    digest = hashlib.sha256(json.dumps(scenes, sort_keys=True).encode()).hexdigest()
    setting_names = set(RenderSettings.__dataclass_fields__)
    settings = RenderSettings(resolution=resolution, samples=samples, seed=seed, counts=(), per_count=len(scenes),
                              val_per_count=0, shard_size=shard_size, layout_sha256=digest,
                              **{k: v for k, v in options.items() if k in setting_names})
    run_options = {k: v for k, v in options.items() if k not in setting_names}
    return render(out, settings, plan_layouts(settings, scenes), "layout", **run_options)
