"""import-clevr: CLEVR-format renders -> lcsbench shards (crop, resize, coordinates, grouping)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lcsbench.data.import_clevr import import_clevr
from lcsbench.data.shards import check_shard, load_manifest, read_shard_samples

REPO = Path(__file__).resolve().parents[1]
DISC_COLORS = {"red": (173, 35, 35), "blue": (42, 75, 215), "yellow": (255, 238, 51)}


def write_clevr_fixture(root: Path) -> Path:
    """Three 480x320 'CLEVR' images with flat discs at their objects' pixel_coords, as the official
    generator writes them (int pixel_coords, origin top-left), and a combined scenes file."""
    (root / "images").mkdir(parents=True)
    layouts = [
        [("red", 240, 160)],
        [("red", 100, 60), ("blue", 380, 250)],
        [("yellow", 200, 100), ("blue", 300, 220), ("red", 20, 160)],  # x=20 lies left of the crop
    ]
    scenes = []
    for index, objects in enumerate(layouts):
        image = Image.new("RGB", (480, 320), (128, 128, 128))
        draw = ImageDraw.Draw(image)
        for color, x, y in objects:
            draw.ellipse((x - 15, y - 15, x + 15, y + 15), fill=DISC_COLORS[color])
        name = f"CLEVR_new_{index:06d}.png"
        image.save(root / "images" / name)
        scenes.append({"split": "new" if index else "val", "image_index": index, "image_filename": name,
                       "objects": [{"color": c, "shape": "sphere", "size": "large", "material": "rubber",
                                    "3d_coords": [0, 0, 0.7], "rotation": 10.0, "pixel_coords": [x, y, 11.0]}
                                   for c, x, y in objects]})
    path = root / "CLEVR_scenes.json"
    path.write_text(json.dumps({"info": {"version": "1.0"}, "scenes": scenes}))
    return path


def test_import_round_trips_positions_and_colours(tmp_path):
    scenes = write_clevr_fixture(tmp_path / "clevr")
    result = subprocess.run([sys.executable, "-m", "lcsbench", "import-clevr", "--images", str(tmp_path / "clevr/images"),
                             "--scenes", str(scenes), "--out", str(tmp_path / "out"), "--resolution", "64"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(tmp_path / "out")
    assert manifest["images"] == {"n1": {"val": 1}, "n2": {"new": 2}}  # scene 3 lost its x=20 object
    assert manifest["dropped_objects_outside_crop"] == 1 and manifest["has_masks"] is False
    seen = 0
    for relpath, n in manifest["shard_samples"].items():
        check_shard(tmp_path / "out" / relpath, n, fix="", exts=("png", "json"))
        for sample in read_shard_samples(tmp_path / "out" / relpath):
            image = np.array(Image.open(io.BytesIO(sample["png"])))
            scene = json.loads(sample["json"])
            assert image.shape == (64, 64, 3)
            assert scene["crop"] == {"left": 80, "top": 0, "side": 320, "source_size": [480, 320]}
            for obj in scene["objects"]:
                x, y, depth = obj["pixel_coords"]
                assert depth == 11.0
                original = next(o for o in json.loads(scenes.read_text())["scenes"][
                    int(scene["source_image_filename"][10:16])]["objects"] if o["color"] == obj["color"])
                assert (x, y) == pytest.approx(((original["pixel_coords"][0] - 80) * 0.2,
                                                original["pixel_coords"][1] * 0.2))
                assert np.abs(image[int(y), int(x)].astype(int) - DISC_COLORS[obj["color"]]).max() <= 12
                seen += 1
    assert seen == 5


def test_import_refuses_bad_input(tmp_path):
    scenes = write_clevr_fixture(tmp_path / "clevr")
    with pytest.raises(FileNotFoundError, match="--images must be the folder"):
        import_clevr([(tmp_path, scenes)], tmp_path / "out")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a CLEVR scenes file"):
        import_clevr([(tmp_path / "clevr/images", bad)], tmp_path / "out2")
    import_clevr([(tmp_path / "clevr/images", scenes)], tmp_path / "out3")
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        import_clevr([(tmp_path / "clevr/images", scenes)], tmp_path / "out3")


def test_import_keeps_every_file_inside_its_folder(tmp_path):
    """issue 17 item 2: a scene's split is a file-name part and its image_filename a path: neither may escape."""
    scenes_path = write_clevr_fixture(tmp_path / "clevr")
    images = tmp_path / "clevr" / "images"
    payload = json.loads(scenes_path.read_text())
    escaping = json.loads(json.dumps(payload))
    escaping["scenes"][1]["split"] = "../../x"
    (tmp_path / "split.json").write_text(json.dumps(escaping))
    out = tmp_path / "deep" / "er" / "out"
    with pytest.raises(ValueError, match=r"scene 1 of .*split.json has split '\.\./\.\./x'"):
        import_clevr([(images, tmp_path / "split.json")], out)
    assert not list(tmp_path.rglob("x-000000.tar")) and not (out / "manifest.json").exists()
    outside = tmp_path / "secret.png"
    outside.write_bytes((images / "CLEVR_new_000000.png").read_bytes())
    reaching = json.loads(json.dumps(payload))
    reaching["scenes"][0]["image_filename"] = "../../secret.png"
    (tmp_path / "image.json").write_text(json.dumps(reaching))
    with pytest.raises(ValueError, match=r"scene 0 of .*image.json names image '\.\./\.\./secret.png', which lies "
                                         r"outside --images"):
        import_clevr([(images, tmp_path / "image.json")], tmp_path / "out2")


@pytest.mark.parametrize("change, message", [
    ({"color": "octarine"}, r"scene 1 of .*bad.json: object 0 has colour 'octarine': CLEVR's colours are"),
    ({"pixel_coords": "12,40"}, r"object 0 has pixel_coords '12,40': expected numbers \[x, y, depth\]"),
    ({"pixel_coords": [None, 4, 1]}, r"object 0 has pixel_coords \[None, 4, 1\]"),
])
def test_import_names_a_bad_object_field(change, message, tmp_path):
    """issue 17 item 10: an unknown colour failed later as a bare tuple.index, a wrong type as a TypeError."""
    payload = json.loads(write_clevr_fixture(tmp_path / "clevr").read_text())
    payload["scenes"][1]["objects"][0].update(change)
    (tmp_path / "bad.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=message):
        import_clevr([(tmp_path / "clevr" / "images", tmp_path / "bad.json")], tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()
