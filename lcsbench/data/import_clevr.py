"""Official CLEVR renders -> lcsbench's shard format (the `import-clevr` command: commands/import_clevr.py).

Reads images and scene JSON written by facebookresearch/clevr-dataset-gen (or the CLEVR v1.0
release), centre-crops each image to a square, resizes it, rescales `pixel_coords` into the crop,
and writes the same shard layout as `lcsbench render` (`OUT/n<k>/<split>-NNNNNN.tar`, grouped by
the number of objects whose centre lies inside the crop). CLEVR has no instance masks: imported
samples have `<key>.png` and `<key>.json` only, and the manifest says `"has_masks": false`.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

from PIL import Image

from lcsbench import __version__
from lcsbench.data.scenes import COLOR_NAMES, IMAGE_EXT, SCENE_EXT
from lcsbench.data.manifest import shard_manifest
from lcsbench.data.shards import CHECKSUMS, MANIFEST, MAX_PNG_SIDE, png_bytes, write_json_atomic, write_shard


def read_json(path: Path) -> object:
    """The JSON in `path`, or a ValueError naming the file and where its JSON breaks."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): pass the CLEVR scenes file as written by "
                         f"clevr-dataset-gen") from None


def load_scenes(path: Path) -> list[dict]:
    """A combined scenes file ({"scenes": [...]}) or a directory of per-image scene JSON files."""
    if path.is_dir():
        scenes = [read_json(p) for p in sorted(path.glob("*.json"))]
    else:
        payload = read_json(path)
        scenes = payload.get("scenes") if isinstance(payload, dict) else None
        if not isinstance(scenes, list):
            raise ValueError(f"{path} is not a CLEVR scenes file: expected a JSON object with a 'scenes' list "
                             f"(e.g. CLEVR_train_scenes.json) or a directory of per-image scene JSON files")
    for number, scene in enumerate(scenes):
        if not isinstance(scene, dict):
            raise ValueError(f"scene {number} of {path} is a JSON {type(scene).__name__}, not a scene object")
    return scenes


def crop_box(width: int, height: int) -> tuple[int, int, int]:
    """Centre square crop: (left, top, side)."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def check_object(obj: object, where: str) -> None:
    """A ValueError unless `obj` is a CLEVR object: a known colour and numeric pixel_coords [x, y, depth]."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is a {type(obj).__name__}, not a CLEVR object record")
    if obj.get("color") not in COLOR_NAMES:
        raise ValueError(f"{where} has colour {obj.get('color')!r}: CLEVR's colours are {list(COLOR_NAMES)}")
    coords = obj.get("pixel_coords")
    if not (isinstance(coords, list) and len(coords) >= 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in coords)):
        # NaN or inf (Python's JSON reads both) would fail the crop test and drop the object silently, filing the
        # image under the wrong object count (issue 25 item 11)
        raise ValueError(f"{where} has pixel_coords {coords!r}: expected numbers [x, y, depth] in source pixels, "
                         f"all finite; fix or remove the scene")


def convert_scene(scene: dict, image: Image.Image, resolution: int) -> tuple[Image.Image, dict]:
    """Crop and resize one image; move its objects into the crop's pixel frame at `resolution`."""
    left, top, side = crop_box(*image.size)
    cropped = image.convert("RGB").crop((left, top, left + side, top + side))
    resized = cropped.resize((resolution, resolution), Image.Resampling.LANCZOS)
    scale = resolution / side
    kept, dropped = [], 0
    objects = scene.get("objects", [])
    if not isinstance(objects, list):
        raise ValueError(f"a CLEVR scene's 'objects' is a list, found {type(objects).__name__}")
    for index, obj in enumerate(objects):
        check_object(obj, f"object {index}")
        px, py, *depth = obj["pixel_coords"]
        x, y = (px - left) * scale, (py - top) * scale
        if not (0.0 <= x < resolution and 0.0 <= y < resolution):
            dropped += 1
            continue
        kept.append({**obj, "pixel_coords": [x, y, *depth], "mask_id": None})
    record = {
        "split": scene.get("split", "train"), "image_index": scene.get("image_index"),
        "image_filename": scene.get("image_filename"), "num_objects": len(kept),
        "width": resolution, "height": resolution, "objects": kept,
        "directions": scene.get("directions", {}), "source": "clevr",
        "crop": {"left": left, "top": top, "side": side, "source_size": list(image.size)},
        "dropped_objects_outside_crop": dropped,
    }
    return resized, record


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # a split becomes a file name: OUT/n<k>/<split>-*.tar


def safe_split(split: object, where: str) -> str:
    """A scene's `split` if it is a plain name (letters, digits, _ and -), else a ValueError naming the scene."""
    if not isinstance(split, str) or not SAFE_NAME.fullmatch(split):
        raise ValueError(f"{where} has split {split!r}: a split becomes part of a shard's file name, so it must be "
                         f"letters, digits, '_' or '-' (e.g. train, val): fix the scene's 'split' field")
    return split


def image_inside(images_dir: Path, scene: dict, where: str) -> Path:
    """The scene's image path, refused when `image_filename` leads outside `images_dir` (e.g. '../x.png')."""
    name = scene.get("image_filename")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where} has no image_filename string (found {name!r}): each CLEVR scene names its image")
    root = images_dir.resolve()
    path = (images_dir / name).resolve()
    if root != path and root not in path.parents:
        raise ValueError(f"{where} names image {name!r}, which lies outside --images {images_dir}: refused; "
                         f"image_filename must be a file inside the --images folder")
    return path


def import_clevr(sources: list[tuple[Path, Path]], out: Path, resolution: int = 64, shard_size: int = 1000,
                 limit: int | None = None) -> dict:
    """Convert (images dir, scenes file) pairs into shards under `out`; returns the manifest."""
    out = Path(out)
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out} already holds a dataset ({out / MANIFEST}): import into a new --out directory")
    groups: dict[tuple[str, str], list[dict]] = {}
    dropped_total, skipped_empty = 0, 0
    for images_dir, scenes_path in sources:
        scenes = load_scenes(Path(scenes_path))[:limit]
        for number, scene in enumerate(scenes):
            image_path = image_inside(Path(images_dir), scene, f"scene {number} of {scenes_path}")
            if not image_path.exists():
                raise FileNotFoundError(f"image {image_path} named by {scenes_path} does not exist: "
                                        f"--images must be the folder holding the scenes' image_filename files")
            with warnings.catch_warnings():  # the size is checked below, against a smaller limit than PIL's
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(image_path)  # reads the header only: the size is checked before decoding
            with image:
                if max(image.size) > MAX_PNG_SIDE:
                    raise ValueError(f"scene {number} of {scenes_path}: image {image_path} declares "
                                     f"{image.size[0]}x{image.size[1]} pixels, beyond the {MAX_PNG_SIDE} px per side "
                                     f"lcsbench decodes (CLEVR renders are 480x320): refused before decoding")
                try:
                    resized, record = convert_scene(scene, image, resolution)
                except ValueError as error:
                    raise ValueError(f"scene {number} of {scenes_path}: {error}") from None
            dropped_total += record["dropped_objects_outside_crop"]
            if record["num_objects"] == 0:
                skipped_empty += 1
                continue
            group = f"n{record['num_objects']}"
            split = safe_split(record["split"], f"scene {number} of {scenes_path}")
            index = len(groups.setdefault((group, split), []))
            key = f"{group}_{split}_{index:08d}"
            record["image_index"] = index
            record["source_image_filename"] = scene["image_filename"]
            record["image_filename"] = f"{key}.{IMAGE_EXT}"
            groups[(group, split)].append({"__key__": key, IMAGE_EXT: png_bytes(resized),
                                           SCENE_EXT: json.dumps(record).encode()})
    listed: list[tuple[str, str, str, int]] = []  # (group, split, relpath, images) per shard
    checksums: dict[str, str] = {}
    for (group, split), samples in sorted(groups.items(), key=lambda item: (int(item[0][0][1:]), item[0][1])):
        for shard_index in range(math.ceil(len(samples) / shard_size)):
            relpath = f"{group}/{split}-{shard_index:06d}.tar"
            chunk = samples[shard_index * shard_size:(shard_index + 1) * shard_size]
            checksums[relpath] = write_shard(out / relpath, chunk)
            listed.append((group, split, relpath, len(chunk)))
    manifest = shard_manifest(
        "import-clevr",
        {"resolution": resolution, "shard_size": shard_size,
         "counts": sorted({int(group[1:]) for group, _ in groups}), "crop": "centre-square",
         "sources": [[str(i), str(s)] for i, s in sources]},
        listed, {"image": IMAGE_EXT, "scene": SCENE_EXT, "mask": None},
        {"lcsbench": __version__, "source": "CLEVR (clevr-dataset-gen)"},
        **{CHECKSUMS: checksums}, has_masks=False, dropped_objects_outside_crop=dropped_total,
        skipped_images_without_objects=skipped_empty)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest
