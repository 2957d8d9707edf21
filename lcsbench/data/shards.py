"""WebDataset shards of rendered scenes: atomic writing, integrity checks, and the manifest.

A shard is a plain tar of samples `<key>.png`, `<key>.json`, `<key>.mask.png` (see scenes.py). It
is written to `<name>.tar.partial` and renamed to `<name>.tar` only when complete, so a visible
shard is always whole; `check_shard` still verifies member counts, because files get copied,
truncated or corrupted after the fact.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
from pathlib import Path

import webdataset as wds

from lcsbench.data.scenes import IMAGE_EXT, MASK_EXT, SCENE_EXT

MANIFEST = "manifest.json"
SAMPLE_EXTS = (IMAGE_EXT, SCENE_EXT, MASK_EXT)


class ShardError(RuntimeError):
    """A shard on disk is missing, truncated or corrupt."""


def write_shard(path: Path, samples: list[dict[str, bytes | str]]) -> None:
    """Write `samples` (dicts with `__key__` and raw bytes per extension) atomically to `path`.

    Members get mtime 0 and fixed owners, so the same samples always give the same bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as stream:
        writer = wds.TarWriter(stream, mtime=0.0, user="lcsbench", group="lcsbench")
        for sample in samples:
            writer.write(sample)
        writer.close()
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, path)


def read_shard_members(path: Path) -> list[tarfile.TarInfo]:
    """All members of a shard tar; a truncated or corrupt tar raises ShardError naming the member."""
    members: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(path, "r:") as tar:
            members.extend(tar)
            # tarfile stops silently at a short header (check_shard counts samples for that case);
            # a cut inside the last member's data is caught here.
            if members:
                last = members[-1]
                size = os.path.getsize(path)
                if last.offset_data + last.size > size:
                    raise tarfile.ReadError("last member's data ends beyond the end of the file")
    except (tarfile.TarError, OSError, EOFError) as error:
        at = f"after member {len(members)} ({members[-1].name})" if members else "at its first member"
        raise ShardError(f"shard {path} is truncated or corrupt {at}: {error}") from error
    return members


def check_shard(path: Path, expected_samples: int, fix: str, exts: tuple[str, ...] = SAMPLE_EXTS) -> None:
    """Raise ShardError unless `path` holds exactly `expected_samples` samples, each with `exts`."""
    members = read_shard_members(path)
    per_key: dict[str, set[str]] = {}
    for member in members:
        key, _, ext = member.name.partition(".")
        per_key.setdefault(key, set()).add(ext)
    incomplete = sorted(key for key, found in per_key.items() if not set(exts) <= found)
    if len(per_key) != expected_samples or incomplete:
        raise ShardError(
            f"shard {path} holds {len(per_key)} samples ({len(incomplete)} incomplete, e.g. "
            f"{incomplete[:3]}) where {expected_samples} complete samples were expected: {fix}")


def read_shard_samples(path: Path) -> list[dict[str, bytes | str]]:
    """Every sample of a shard as a dict of raw bytes per extension plus `__key__`, in tar order."""
    samples: dict[str, dict[str, bytes | str]] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            handle = tar.extractfile(member)
            assert handle is not None, f"{path}: member {member.name} is not a regular file"
            samples.setdefault(key, {"__key__": key})[ext] = handle.read()
    return list(samples.values())


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write-then-rename; the partial name is unique per process, as machines may share `path`."""
    partial = path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}.partial")
    partial.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(partial, path)


def load_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: {root} is not an lcsbench dataset. Render one with "
            f"`python -m lcsbench render --out {root} ...` or convert CLEVR with `python -m lcsbench import-clevr`.")
    return json.loads(path.read_text())


def png_bytes(image) -> bytes:
    """Encode a PIL image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
