"""The scene script on Blender 4.x and 5.x (issue 17 item 11), through `bpy` from PyPI in a Python of its own.

Blender 4.0 renamed the Principled BSDF input "Specular" and 4.1 removed auto smooth; the script branches on
`bpy.app.version`. Debian's Blender 3.4 runs in every render test; this test renders the same jobs with the bpy
of LCSBENCH_BPY_PYTHON (and, when a 3.x `blender` is on PATH, compares the labels: same scenes on both). Run it
once per release to support (4.2, 4.5 and 5.0 pass; CONTRIBUTING.md, "Blender versions"):

    python3.11 -m venv /tmp/bpy4venv && /tmp/bpy4venv/bin/pip install "bpy==4.5.*"
    LCSBENCH_BPY_PYTHON=/tmp/bpy4venv/bin/python scripts/test.sh -m slow tests/test_blender_versions.py
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from lcsbench.data.blender_binary import SCENE_SCRIPT, SUPPORTED_BLENDER, blender_version
from lcsbench.data.render_plan import RenderSettings

BPY_PYTHON = os.environ.get("LCSBENCH_BPY_PYTHON", "")
SETUP = ("python3.11 -m venv /tmp/bpy4venv && /tmp/bpy4venv/bin/pip install 'bpy==4.5.*', then set "
         "LCSBENCH_BPY_PYTHON=/tmp/bpy4venv/bin/python (CONTRIBUTING.md, 'Blender versions')")
JOBS = [
    {"key": "n3_train_00000000", "num_objects": 3, "split": "train", "image_index": 0, "scene_seed": "0/n3/train/0"},
    {"key": "layout_eval_00000000", "split": "eval", "image_index": 0, "scene_seed": "0/layout/eval/0",
     "layout": [{"pixel": [10.0, 12.0], "color": "red", "shape": "sphere", "material": "metal"},
                {"pixel": [24.0, 22.0], "color": "blue", "shape": "cube", "material": "rubber", "size": "large"}]},
]


def bpy_version(python: str) -> tuple[int, ...] | None:
    try:
        result = subprocess.run([python, "-c", "import bpy; print(*bpy.app.version)"], capture_output=True,
                                text=True, timeout=300)
    except OSError:
        return None
    return tuple(int(v) for v in result.stdout.split()[-3:]) if result.returncode == 0 else None


def render_jobs(command: list[str], directory) -> dict[str, dict]:
    """Run the scene script on JOBS into `directory`; each key's decoded image, mask and scene record."""
    directory.mkdir()
    jobs = directory / "jobs.json"
    jobs.write_text(json.dumps({"settings": RenderSettings(resolution=32, samples=4).scene_script_settings(),
                                "images": [{**job, "dir": str(directory)} for job in JOBS]}))
    result = subprocess.run([*command, "--jobs", str(jobs), "--threads", "1"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("LCSBENCH_DONE")] == \
        [job["key"] for job in JOBS]
    return {job["key"]: {
        "image": np.array(Image.open(io.BytesIO((directory / f"{job['key']}.png").read_bytes()))),
        "mask": np.array(Image.open(directory / f"{job['key']}.mask.png")),
        "scene": json.loads((directory / f"{job['key']}.json").read_text()),
    } for job in JOBS}


@pytest.mark.slow  # a second Blender, as a Python module of ~350 MB
def test_scene_script_renders_on_blender_4_and_later(tmp_path):
    if not BPY_PYTHON:
        pytest.skip(f"no Blender 4.x or later to run the scene script on: {SETUP}")
    version = bpy_version(BPY_PYTHON)
    if version is None or version[0] < 4:
        pytest.skip(f"{BPY_PYTHON} does not import bpy 4.x or later (found {version}): {SETUP}")
    assert SUPPORTED_BLENDER[0] <= version[:2] <= SUPPORTED_BLENDER[1], f"bpy {version} is not declared supported"
    four = render_jobs([BPY_PYTHON, str(SCENE_SCRIPT)], tmp_path / "four")
    for key, render in four.items():
        assert render["image"].shape == (32, 32, 3) and render["image"].std() > 0  # lit, not a flat frame
        objects = render["scene"]["objects"]
        assert sorted(set(np.unique(render["mask"])) - {0}) == [o["mask_id"] for o in objects]
        assert [o["visible_pixels"] for o in objects] == [int((render["mask"] == o["mask_id"]).sum()) for o in objects]
    layout = four["layout_eval_00000000"]["scene"]["objects"]
    assert [o["pixel_coords"][:2] for o in layout] == [pytest.approx([10.0, 12.0], abs=1e-3),
                                                       pytest.approx([24.0, 22.0], abs=1e-3)]
    blender = shutil.which("blender")
    if blender and blender_version(blender).startswith("3."):  # same jobs on Debian's 3.x: same scenes and labels
        three = render_jobs([blender, "-b", "--factory-startup", "-noaudio", "--python-exit-code", "1",
                             "-P", str(SCENE_SCRIPT), "--"], tmp_path / "three")
        for key in four:
            ours, theirs = four[key]["scene"], three[key]["scene"]
            assert [{k: o[k] for k in ("shape", "size", "material", "color", "3d_coords", "rotation", "mask_id")}
                    for o in ours["objects"]] == [{k: o[k] for k in ("shape", "size", "material", "color",
                                                                     "3d_coords", "rotation", "mask_id")}
                                                  for o in theirs["objects"]]
            for a, b in zip(ours["objects"], theirs["objects"]):
                assert a["pixel_coords"] == pytest.approx(b["pixel_coords"], abs=1e-4)
            assert np.array_equal(four[key]["mask"], three[key]["mask"])
