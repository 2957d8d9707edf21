"""The one owner of a shard dataset's manifest (`ROOT/manifest.json`): what `lcsbench render` and `lcsbench
import-clevr` write, and how a resumed render reconciles it and records each finished shard's sha256.

    {"format": FORMAT, "mode": "random" | "layout" | "import-clevr", "settings": {...},
     "shards": {group: {split: [relpath, ...]}}, "shard_samples": {relpath: images}, "images": {group: {split: n}},
     "totals": {split: n}, ..., "sample_keys": {...}, "renderer": {...}, "created": ISO time}

Readers go through data/shards.py (`read_manifest_file`, `load_manifest`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lcsbench import __version__
from lcsbench.data.blender_binary import SCENE_SCRIPT
from lcsbench.data.locks import LOCKS, exclusive_lock
from lcsbench.data.render_errors import RenderError
from lcsbench.data.render_plan import RenderSettings, ShardPlan
from lcsbench.data.scenes import IMAGE_EXT, MASK_EXT, SCENE_EXT
from lcsbench.data.shards import CHECKSUMS, MANIFEST, read_manifest_file, write_json_atomic

FORMAT = "lcsbench-clevr-shards/1"


# ---- building a manifest ------------------------------------------------------------------------


def shard_tables(shards: Iterable[tuple[str, str, str, int]]) -> dict[str, dict]:
    """The manifest's tables of its shards, from (group, split, relpath, images) per shard in dataset order:
    `shards` (relpaths per group and split), `shard_samples`, `images` (per group and split) and `totals`."""
    listed: dict[str, dict[str, list[str]]] = {}
    shard_samples: dict[str, int] = {}
    images: dict[str, dict[str, int]] = {}
    for group, split, relpath, count in shards:
        listed.setdefault(group, {}).setdefault(split, []).append(relpath)
        shard_samples[relpath] = count
        images.setdefault(group, {}).setdefault(split, 0)
        images[group][split] += count
    totals: dict[str, int] = {}
    for per_split in images.values():
        for split, n in per_split.items():
            totals[split] = totals.get(split, 0) + n
    return {"shards": listed, "shard_samples": shard_samples, "images": images, "totals": totals}


def shard_manifest(
    mode: str,  # "random", "layout" (lcsbench render) or "import-clevr"
    settings: dict[str, Any],  # what made the pixels and labels (JSON types)
    shards: Iterable[tuple[str, str, str, int]],  # (group, split, relpath, images) per shard, in dataset order
    sample_keys: dict[str, str | None],  # member extension of the image, scene and mask (None: no masks)
    renderer: dict[str, Any],  # what rendered or converted the images
    **fields: Any,  # further entries (checksums, has_masks, counts of dropped objects, ...)
) -> dict:
    """A dataset's manifest (module docstring), stamped with the time it was made."""
    return {"format": FORMAT, "mode": mode, "settings": settings, **shard_tables(shards), **fields,
            "sample_keys": sample_keys, "renderer": renderer,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def render_manifest(settings: RenderSettings, plans: list[ShardPlan], mode: str, blender_ver: str) -> dict:
    """The manifest of a Blender render of `plans` (all of the dataset's shards) with `settings`."""
    return shard_manifest(
        mode, json.loads(json.dumps(asdict(settings))),  # tuples as lists, as read back
        [(plan.group, plan.split, plan.relpath, len(plan.jobs)) for plan in plans],
        {"image": IMAGE_EXT, "scene": SCENE_EXT, "mask": MASK_EXT},
        {"lcsbench": __version__, "scene_script_sha256": hashlib.sha256(SCENE_SCRIPT.read_bytes()).hexdigest(),
         "blender": blender_ver, "engine": "CYCLES"})


# ---- a render's manifest while it runs ----------------------------------------------------------


def reconcile_manifest(out: Path, manifest: dict) -> None:
    """Refuse an output directory made with other settings; otherwise (re)write the manifest, keeping the
    checksums of shards already finished."""
    path = out / MANIFEST
    with exclusive_lock(out / LOCKS / "manifest"):
        if path.exists():
            existing = read_manifest_file(path)
            old, new = existing.get("settings", {}), manifest["settings"]
            differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if existing.get("mode") != manifest["mode"]:
                differing.insert(0, "mode")
            if differing:
                detail = ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in differing)
                raise RenderError(
                    f"{out} holds a dataset rendered with other settings ({detail}). Nothing was changed. "
                    f"Render into a new --out directory, or rerun with the original arguments to resume it.")
            was, now = existing.get("renderer", {}).get("blender", ""), manifest["renderer"]["blender"]
            if was and was.split(".")[:2] != now.split(".")[:2]:  # same labels, other pixels (Cycles, Principled BSDF)
                raise RenderError(
                    f"{out} was rendered with Blender {was} and this is Blender {now}: their images differ (same "
                    f"scenes and labels, other shading), so one dataset must not mix them. Nothing was changed. "
                    f"Finish it with Blender {'.'.join(was.split('.')[:2])} (--blender /path/to/blender), or render "
                    f"into a new --out directory.")
            manifest["created"] = existing.get("created", manifest["created"])
            manifest[CHECKSUMS] = existing.get(CHECKSUMS, {})  # none in manifests of earlier versions
        manifest.setdefault(CHECKSUMS, {})
        write_json_atomic(path, manifest)


def record_checksum(out: Path, relpath: str, sha256: str) -> None:
    """Add one finished shard's sha256 to the manifest (read, update, rename under the manifest lock)."""
    path = out / MANIFEST
    with exclusive_lock(out / LOCKS / "manifest"):
        manifest = read_manifest_file(path)
        manifest.setdefault(CHECKSUMS, {})[relpath] = sha256
        write_json_atomic(path, manifest)
