"""Tampered datasets and sources (issue 25, items 3, 6, 11, 12): a manifest cannot send readers outside its folder,
a PNG's declared size is checked before it is decoded, NaN placements and NaN object positions are refused."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from lcsbench.cli import main as cli_main
from lcsbench.data.datamodule import CLEVRDataModule
from lcsbench.data.import_clevr import import_clevr
from lcsbench.data.shards import MANIFEST, PNG_SIGNATURE, decode_png, load_manifest, png_bytes, write_shard


def png_declaring(width: int, height: int) -> bytes:
    """A small, well-formed PNG (valid CRCs) whose header declares `width` x `height` RGB pixels: decoding it would
    allocate width * height * 3 bytes before finding its data short."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


def write_dataset(root: Path, relpath: str, image: bytes, resolution: int = 32) -> Path:
    """A one-shard dataset at `root` whose manifest lists `relpath` (written relative to root)."""
    root.mkdir(parents=True, exist_ok=True)
    write_shard((root / relpath), [{"__key__": "n1_train_00000000", "png": image,
                                    "json": json.dumps({"objects": [], "num_objects": 0}).encode()}])
    manifest = {"format": "lcsbench-clevr-shards/1", "mode": "random", "has_masks": False,
                "settings": {"resolution": resolution, "counts": [1]},
                "shards": {"n1": {"train": [relpath], "val": [relpath]}}, "shard_samples": {relpath: 1}}
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


# --- item 3: shard paths stay inside the dataset folder ----------------------------------------------------------


@pytest.mark.parametrize("relpath", ["../../outside/x.tar", "n1/../../x.tar", "/tmp/outside.tar"])
def test_a_manifest_cannot_send_readers_outside_its_folder(relpath, tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "a" / "data"
    image = png_bytes(Image.new("RGB", (32, 32)))
    write_dataset(root, "n1/train-000000.tar", image)
    manifest = json.loads((root / MANIFEST).read_text())
    outside = (root / relpath) if not relpath.startswith("/") else tmp_path / "outside.tar"
    write_shard(outside.resolve(), [{"__key__": "other", "png": image, "json": b"{}"}])  # another folder's images
    relpath = relpath if not relpath.startswith("/") else str(tmp_path / "outside.tar")
    manifest["shards"]["n1"]["val"] = [relpath]
    manifest["shard_samples"][relpath] = 1
    (root / MANIFEST).write_text(json.dumps(manifest))

    with pytest.raises(ValueError, match=rf"lists shard '{relpath}', which is not a path inside the dataset folder"):
        load_manifest(root)
    assert cli_main(["render", "--out", str(root), "--verify"]) == 1  # it verified (and counted) the outside shard
    assert "not a path inside the dataset folder" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="not a path inside the dataset folder"):  # it scored the other images
        cli_main(["eval-judge", "--data", str(root)])
    with pytest.raises(ValueError, match="not a path inside the dataset folder"):  # `fit` reads the same manifest
        CLEVRDataModule(str(root), counts="1", num_workers=0).setup()


@pytest.mark.parametrize("tamper, message", [
    (lambda m: m["shard_samples"].update({"n1/train-000000.tar": -3}), "holds -3 samples; a count is a whole number"),
    (lambda m: m.update(shards=["n1/train-000000.tar"]), "'shards' is a list where an object was expected"),
])
def test_a_tampered_manifest_is_refused_naming_the_entry(tamper, message, tmp_path):
    from PIL import Image

    root = write_dataset(tmp_path / "data", "n1/train-000000.tar", png_bytes(Image.new("RGB", (32, 32))))
    manifest = json.loads((root / MANIFEST).read_text())
    tamper(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=message):
        load_manifest(root)


def test_a_manifest_that_is_not_json_is_named(tmp_path):
    (tmp_path / MANIFEST).write_text('{"shards": {"n1": ')
    with pytest.raises(ValueError, match=rf"{tmp_path / MANIFEST} is not valid JSON \(Expecting value: line 1"):
        load_manifest(tmp_path)
    with pytest.raises(SystemExit, match="is not valid JSON"):
        cli_main(["eval-judge", "--data", str(tmp_path)])


# --- item 12: a PNG's declared size is checked before decoding -----------------------------------------------------


def test_a_png_declaring_13000_px_is_refused_from_its_header(tmp_path, capsys):
    bomb = png_declaring(13000, 13000)
    assert len(bomb) < 1000  # a few hundred bytes that would decode into 13000 x 13000 x 3 = 507 MB
    with pytest.raises(ValueError, match="declares 13000x13000 pixels where the dataset's images are 32x32: refused "
                                         "before decoding"):
        decode_png(bomb, 32)
    root = write_dataset(tmp_path / "data", "n1/train-000000.tar", bomb)
    assert cli_main(["render", "--out", str(root), "--verify"]) == 1
    assert "declares 13000x13000 pixels where the dataset's images are 32x32" in capsys.readouterr().err


def test_import_clevr_checks_a_source_image_size_before_decoding(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "big.png").write_bytes(png_declaring(13000, 13000))
    scenes = tmp_path / "scenes.json"
    scenes.write_text(json.dumps({"scenes": [{"split": "train", "image_filename": "big.png", "objects": []}]}))
    with pytest.raises(ValueError, match=r"scene 0 of .*big.png declares 13000x13000 pixels, beyond the 4096 px "
                                         r"per side lcsbench decodes .*refused before decoding"):
        import_clevr([(images, scenes)], tmp_path / "out", resolution=32)


# --- item 11: NaN object positions in CLEVR scenes -----------------------------------------------------------------


@pytest.mark.parametrize("coords", [[float("nan"), 160, 11.0], [240, float("inf"), 11.0]])
def test_import_clevr_refuses_a_scene_with_non_finite_pixel_coords(coords, tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (480, 320)).save(images / "a.png")
    objects = [{"color": "red", "pixel_coords": [240, 160, 11.0]}, {"color": "blue", "pixel_coords": coords}]
    scenes = tmp_path / "scenes.json"
    scenes.write_text(json.dumps({"scenes": [{"split": "train", "image_filename": "a.png", "objects": objects}]}))
    with pytest.raises(ValueError, match=r"scene 0 of .*scenes.json: object 1 has pixel_coords \[.*\]: expected "
                                         r"numbers \[x, y, depth\] in source pixels, all finite"):
        import_clevr([(images, scenes)], tmp_path / "out", resolution=32)
    assert not (tmp_path / "out").exists()  # before: the image was filed under n1, its blue object dropped


# --- item 6: placement numbers must be finite ------------------------------------------------------------------------


@pytest.mark.parametrize("flags, name", [(["--min-dist", "nan"], "--min-dist"), (["--margin", "nan"], "--margin"),
                                         (["--min-visible-fraction", "1.5"], "--min-visible-fraction"),
                                         (["--min-dist", "-1"], "--min-dist")])
def test_render_refuses_non_finite_placement(flags, name, tmp_path, capsys):
    assert cli_main(["render", "--out", str(tmp_path / "x"), *flags]) == 1
    assert f"{name} must be a finite number in [" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
