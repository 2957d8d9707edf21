"""WebDataset shards of rendered scenes: atomic writing, integrity checks, and the manifest.

A shard is a plain tar of samples `<key>.png`, `<key>.json`, `<key>.mask.png` (see scenes.py). It
is written to `<name>.tar.partial` and renamed to `<name>.tar` only when complete, so a visible
shard is always whole; `check_shard` still verifies member counts, because files get copied,
truncated or corrupted after the fact. `write_shard` returns the shard's sha256, which the manifest
records (`shard_sha256`); `verify_shard` checks it and decodes every member, which also finds bytes
flipped inside an intact tar. Manifests written before checksums existed have none: their shards get
the decode check only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import struct
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import webdataset as wds
from PIL import Image

from lcsbench.data.scenes import IMAGE_EXT, MASK_EXT, SCENE_EXT

MANIFEST = "manifest.json"
SAMPLE_EXTS = (IMAGE_EXT, SCENE_EXT, MASK_EXT)
CHECKSUMS = "shard_sha256"  # manifest key: {relpath: sha256 hex} of finished shards (absent in older manifests)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_SIDE = 4096  # pixels per side lcsbench decodes (CLEVR: 480x320; renders: <= 256); beyond: refused unread


class ShardError(RuntimeError):
    """A shard on disk is missing, truncated or corrupt."""


def write_shard(path: Path, samples: list[dict[str, bytes | str]]) -> str:
    """Write `samples` (dicts with `__key__` and raw bytes per extension) atomically to `path`.

    Members get mtime 0 and fixed owners, so the same samples always give the same bytes. Returns the
    sha256 of the bytes on disk (read back after fsync), for the manifest.
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
    digest = file_sha256(partial)
    os.replace(partial, path)
    return digest


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


# ---- verification: checksum, then every member decodes -----------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header chunk (IHDR, the first after the signature), without decoding: a PNG
    of a few KB may declare 13000x13000 pixels, which decoding would allocate (about 0.5 GB per channel byte)."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
        raise ValueError("not a PNG (no signature followed by an IHDR header chunk)")
    return struct.unpack(">II", data[16:24])


def check_png_size(data: bytes, resolution: int | None) -> None:
    """Raise ValueError unless the PNG header declares `resolution` x `resolution` pixels (None: at most
    MAX_PNG_SIDE per side), before anything is decoded."""
    width, height = png_size(data)
    if resolution is not None and (width, height) != (resolution, resolution):
        raise ValueError(f"its header declares {width}x{height} pixels where the dataset's images are "
                         f"{resolution}x{resolution}: refused before decoding")
    if max(width, height) > MAX_PNG_SIDE:
        raise ValueError(f"its header declares {width}x{height} pixels, beyond the {MAX_PNG_SIDE} px per side "
                         f"lcsbench decodes: refused before decoding")


def decode_png(data: bytes, resolution: int | None) -> np.ndarray:
    """The RGB pixels [H, W, 3] uint8 of a PNG whose header declares `resolution` x `resolution` (checked first)."""
    check_png_size(data, resolution)
    with Image.open(io.BytesIO(data)) as png:
        return np.array(png.convert("RGB"))


def check_png(data: bytes, resolution: int | None = None) -> None:
    """Raise ValueError unless `data` is a whole PNG: signature, every chunk's CRC, IEND, the declared size
    (`check_png_size`), and pixels that decode.

    The CRCs catch any flipped byte (a decoder may not read every chunk); the decode catches the rest.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("no PNG signature")
    offset, tag = len(PNG_SIGNATURE), b""
    while tag != b"IEND":
        if offset + 12 > len(data):
            raise ValueError(f"cut inside a chunk at byte {offset}")
        length, tag = struct.unpack(">I4s", data[offset:offset + 8])
        end = offset + 12 + length
        if end > len(data):
            raise ValueError(f"chunk {tag!r} at byte {offset} runs past the end")
        if zlib.crc32(data[offset + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            raise ValueError(f"chunk {tag!r} at byte {offset} fails its CRC")
        offset = end
    check_png_size(data, resolution)
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def check_member(ext: str, data: bytes, resolution: int | None = None) -> None:
    """Raise ValueError unless one sample member decodes: PNG images and masks (of `resolution` x `resolution`
    pixels when given), JSON scene records."""
    if ext.endswith("png"):
        check_png(data, resolution)
    elif ext == "json":
        if not isinstance(json.loads(data), dict):
            raise ValueError("the scene record is not a JSON object")


def verify_shard(path: Path, expected_samples: int, sha256: str | None, fix: str,
                 exts: tuple[str, ...] = SAMPLE_EXTS, resolution: int | None = None) -> None:
    """Raise ShardError unless `path` is whole: its member count (`check_shard`), its recorded checksum (None:
    not recorded, skipped), and every member decodes (`check_member`, images of `resolution` px when given)."""
    check_shard(path, expected_samples, fix, exts)
    if sha256 is not None:
        found = file_sha256(path)
        if found != sha256:
            raise ShardError(f"shard {path} does not match the checksum the manifest recorded when it was written "
                             f"(sha256 {found[:16]}... where {sha256[:16]}... was recorded): its bytes changed; {fix}")
    for sample in iter_shard_samples(path, fix):
        for ext, data in sample.items():
            if ext == "__key__":
                continue
            try:
                check_member(ext, data, resolution)
            except Exception as error:  # noqa: BLE001 - any decode failure means a damaged member; name it
                raise ShardError(f"shard {path} holds a damaged member {sample['__key__']}.{ext} "
                                 f"({type(error).__name__}: {error}); {fix}") from error


def verify_dataset(root: Path, fix: str) -> dict:
    """`verify_shard` on every shard the manifest of `root` lists. Returns the report: counts of shards
    verified, without a recorded checksum and missing (not rendered yet), and one line per damaged shard."""
    manifest = load_manifest(root)
    checksums = manifest.get(CHECKSUMS, {})
    exts = SAMPLE_EXTS if manifest.get("has_masks", True) else (IMAGE_EXT, SCENE_EXT)  # imports have no masks
    resolution = manifest.get("settings", {}).get("resolution")
    resolution = resolution if isinstance(resolution, int) and not isinstance(resolution, bool) else None
    shard_samples = manifest.get("shard_samples", {})
    report = {"root": str(root), "shards": len(shard_samples), "verified": 0,
              "without_checksum": 0, "missing": [], "damaged": []}
    for relpath, samples in shard_samples.items():
        path = Path(root) / relpath
        if not path.exists():
            report["missing"].append(relpath)
            continue
        try:
            verify_shard(path, samples, checksums.get(relpath), fix, exts, resolution)
        except ShardError as error:
            report["damaged"].append(str(error))
            continue
        report["verified"] += 1
        report["without_checksum"] += relpath not in checksums
    return report


def iter_shard_samples(path: Path | str, fix: str = "") -> Iterator[dict[str, bytes | str]]:
    """Stream the samples of one shard in tar order: dicts of raw bytes per extension plus `__key__`.

    The one reader of shard contents (training stream, layout renders, tests). A truncated or corrupt tar
    raises ShardError naming the shard and the last key read; `fix` says what to do about it.
    """
    sample: dict[str, bytes | str] | None = None
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = Path(member.name).name.partition(".")
                if sample is not None and sample["__key__"] != key:
                    yield sample
                    sample = None
                if sample is None:
                    sample = {"__key__": key}
                handle = tar.extractfile(member)
                sample[ext] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError) as error:
        at = f"after sample {sample['__key__']}" if sample else "at its first sample"
        raise ShardError(f"shard {path} is truncated or corrupt {at}: {error}" + (f"; {fix}" if fix else "")
                         ) from error
    if sample is not None:
        yield sample


def read_shard_samples(path: Path | str) -> list[dict[str, bytes | str]]:
    """Every sample of a shard (`iter_shard_samples`), as a list."""
    return list(iter_shard_samples(path))


def read_layout_images(root: Path, count: int) -> np.ndarray:
    """The renders of a `render --layout` run (OUT/layout/eval-*.tar), in scene order, as uint8 [N, H, W, 3]."""
    manifest = load_manifest(root)
    shards = manifest["shards"].get("layout", {}).get("eval")
    if manifest.get("mode") != "layout" or not shards:
        raise ShardError(f"{root} is not a `render --layout` output (its manifest lists no layout/eval shards): "
                         f"delete {root} and run again")
    resolution = manifest.get("settings", {}).get("resolution")
    images: dict[str, np.ndarray] = {}
    for rel in shards:
        for sample in iter_shard_samples(root / rel):
            try:
                images[str(sample["__key__"])] = decode_png(sample[IMAGE_EXT], resolution)
            except (KeyError, ValueError, OSError) as error:
                raise ShardError(f"sample {sample['__key__']} of {root / rel} cannot be read ({type(error).__name__}: "
                                 f"{error}): delete {root} and run again") from None
    if len(images) != count:
        raise ShardError(f"the layout render {root} holds {len(images)} images where {count} were requested: "
                         f"delete {root} and run again")
    return np.stack([images[k] for k in sorted(images)])


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write-then-rename; the partial name is unique per process, as machines may share `path`."""
    partial = path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}.partial")
    partial.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(partial, path)


def load_manifest(root: Path) -> dict:
    """The manifest of the dataset at `root`, checked (`check_manifest`): every reader of a dataset starts here."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: {root} is not an lcsbench dataset. Render one with "
            f"`python -m lcsbench render --out {root} ...` or convert CLEVR with `python -m lcsbench import-clevr`.")
    return check_manifest(read_manifest_file(path), path)


def read_manifest_file(path: Path) -> dict:
    """The JSON object in `path`, or a ValueError naming the file and where its JSON breaks."""
    try:
        payload = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): the manifest is damaged (an interrupted copy?); "
                         f"copy the dataset again, or re-render it into a new --out") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path} holds a JSON {type(payload).__name__} where a manifest object was expected: "
                         f"it is not an lcsbench manifest")
    return payload


def shard_path_inside(relpath: object, where: str) -> str:
    """`relpath` if it names a file inside the dataset root (relative, no '..'), else a ValueError: a manifest
    must not send readers to another folder's files (issue 25 item 3)."""
    parts = PurePosixPath(relpath).parts if isinstance(relpath, str) and "\\" not in relpath else ()
    if not parts or PurePosixPath(relpath).is_absolute() or ".." in parts or ":" in parts[0]:
        raise ValueError(f"{where} lists shard {relpath!r}, which is not a path inside the dataset folder "
                         f"(relative, without '..'): refused; a manifest lists its shards as e.g. n3/train-000000.tar")
    return relpath


def check_manifest(manifest: dict, path: Path) -> dict:
    """`manifest` if its shard lists are well formed: `shards` {group: {split: [relpath]}}, `shard_samples`
    {relpath: count >= 0} and `shard_sha256` {relpath: hex}, every relpath inside the root; else a ValueError
    naming `path` and the entry."""
    shards, samples = manifest.get("shards", {}), manifest.get("shard_samples", {})
    checksums, settings = manifest.get(CHECKSUMS, {}), manifest.get("settings", {})
    for name, value in (("shards", shards), ("shard_samples", samples), (CHECKSUMS, checksums), ("settings", settings)):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: '{name}' is a {type(value).__name__} where an object was expected: the "
                             f"manifest is damaged; re-render the dataset")
    for group, splits in shards.items():
        if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
            raise ValueError(f"{path}: shards[{group!r}] must map splits to lists of shard paths; found {splits!r:.80}")
        for relpaths in splits.values():
            for relpath in relpaths:
                shard_path_inside(relpath, str(path))
    for relpath, count in samples.items():
        shard_path_inside(relpath, str(path))
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"{path}: shard_samples says {relpath} holds {count!r} samples; a count is a whole "
                             f"number >= 0: the manifest is damaged; re-render the dataset")
    for relpath, digest in checksums.items():
        shard_path_inside(relpath, str(path))
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ValueError(f"{path}: {CHECKSUMS}[{relpath!r}] is {digest!r:.80}, not a sha256 hex digest: the "
                             f"manifest is damaged; verify the shards with `render --repair` after re-rendering")
    return manifest


def png_bytes(image) -> bytes:
    """Encode a PIL image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
