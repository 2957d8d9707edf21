"""What TensorBoard shows after the quickstart (issue 35), read through a real TensorBoard server's HTTP API.

A short real fit of configs/quickstart.yaml (its model, its callbacks, the shipped 32 px judge) on the tiny Blender
render, with the analyses every 5 steps of 10 and their costs cut down (fewer noise levels, k and samples), runs in
a subprocess (`python -m lcsbench fit`); then the installed `tensorboard` package's own server is started on a free
loopback port on the run folder and asked over HTTP, as the browser's dashboard asks it: the data plugin routes for
runs, the scalar, image and text tags, and the bytes of each analysis image, which must decode as pictures.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.conftest import run_killing_on_timeout

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY = 10, 5  # two analysis rounds, as the quickstart's 600 steps analysed every 300
SIGMAS = [0.5, 5.0]

# What a reader of the quickstart's run finds under each analysis (callbacks/locality.py, lengthgen.py, features.py)
EXPECTED_SCALARS = {f"locality/pixel_radius90@sigma={s:g}" for s in SIGMAS} | {
    f"locality/conditional_radius90@sigma={s:g}" for s in SIGMAS} | {
    "lengthgen/success@k=1", "lengthgen/success@k=2", "lengthgen/k_max", "lengthgen/k_max_strict",
    "features/mean_abs_cosine_off_diagonal"}
EXPECTED_IMAGES = {"locality/grid_t0", "locality/radius", "lengthgen/curve", "features/cosines"}
EXPECTED_TEXT = {"locality/about", "lengthgen/about", "features/about"}


def small_quickstart(data_root: Path, save_dir: Path) -> dict:
    """configs/quickstart.yaml as shipped, with the data, the length and the analyses' costs made test-sized."""
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(max_steps=STEPS, log_every_n_steps=2)
    trainer["logger"]["init_args"]["save_dir"] = str(save_dir)
    cut = {"LocalityHeatmaps": dict(sigmas=SIGMAS), "FeatureCosine": dict(sigmas=[1.0], max_layers=1),
           "LengthGenCurve": dict(ks=[1, 2], samples_per_k=1, num_steps=2), "SampleGrid": dict(num_steps=2)}
    for callback in trainer["callbacks"]:
        name = callback["class_path"].rsplit(".", 1)[-1]
        if name in cut:
            callback["init_args"].update(every_n_steps=EVERY, **cut[name])
    config["data"]["init_args"].update(root=str(data_root), batch_size=4, num_workers=0, shuffle_buffer=8,
                                       steps_per_epoch=EVERY)
    return config


@pytest.fixture(scope="module")
def quickstart_run(clevr_shards, tmp_path_factory) -> tuple[Path, str]:
    """(run folder with the event files, the fit's output) of the small quickstart fit."""
    root = tmp_path_factory.mktemp("tb_quickstart")
    config = root / "quickstart.yaml"
    config.write_text(yaml.safe_dump(small_quickstart(clevr_shards, root / "runs")))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    fit = run_killing_on_timeout([sys.executable, "-m", "lcsbench", "fit", "--config", str(config)], env, 600,
                                 "the small quickstart fit")
    assert fit.returncode == 0, fit.stdout[-4000:]
    runs = sorted((root / "runs").glob("lightning_logs/version_*"))
    assert len(runs) == 1, runs
    return runs[0], fit.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tensorboard(quickstart_run):
    """GET function of the installed TensorBoard's own server on the run's log folder (loaded once, then idle)."""
    logdir = quickstart_run[0].parent
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                               "127.0.0.1", "--port", str(port), "--load_fast", "false", "--reload_interval", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def get(route: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=30) as response:
            return response.read()

    try:
        deadline = time.monotonic() + 90
        while True:  # up, and done with its one load: the last analysis' text card is listed
            try:
                if any("features/about" in tags for tags in json.loads(get("/data/plugin/text/tags")).values()):
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"TensorBoard did not serve the run on port {port}:\n{server.communicate()[0][-3000:]}")
            time.sleep(0.5)
        yield get
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_tensorboard_lists_the_three_analyses_of_the_quickstart(quickstart_run, tensorboard):
    run = quickstart_run[0].name
    assert run in json.loads(tensorboard("/data/runs"))
    scalars = set(json.loads(tensorboard("/data/plugin/scalars/tags"))[run])
    images = set(json.loads(tensorboard("/data/plugin/images/tags"))[run])
    text = set(json.loads(tensorboard("/data/plugin/text/tags"))[run])
    print("scalars:", sorted(scalars), "\nimages:", sorted(images), "\ntext:", sorted(text))
    assert EXPECTED_SCALARS <= scalars, f"missing scalars: {sorted(EXPECTED_SCALARS - scalars)}"
    assert EXPECTED_IMAGES <= images, f"missing images: {sorted(EXPECTED_IMAGES - images)}"
    assert EXPECTED_TEXT <= text, f"missing text cards: {sorted(EXPECTED_TEXT - text)}"
    assert {"train/loss", "samples/ema"} <= scalars | images  # the trainer's own, beside the analyses


def test_each_analysis_is_logged_twice_and_its_images_decode(quickstart_run, tensorboard):
    run = quickstart_run[0].name
    for tag in sorted(EXPECTED_IMAGES):
        query = urllib.parse.urlencode({"run": run, "tag": tag, "sample": 0})
        entries = json.loads(tensorboard(f"/data/plugin/images/images?{query}"))
        assert [entry["step"] for entry in entries] == [EVERY, STEPS], tag
        picture = Image.open(io.BytesIO(tensorboard(f"/data/plugin/images/individualImage?{entries[-1]['query']}")))
        picture.load()
        assert picture.width >= 300 and picture.height >= 200, (tag, picture.size)  # a figure, not a thumbnail
        assert len(picture.convert("L").getcolors(256)) > 16, tag  # drawn, not blank
    for tag in sorted(EXPECTED_SCALARS):
        query = urllib.parse.urlencode({"run": run, "tag": tag})
        steps = [step for _, step, _ in json.loads(tensorboard(f"/data/plugin/scalars/scalars?{query}"))]
        assert steps == [EVERY, STEPS], tag


def test_each_text_card_says_what_its_analysis_shows_and_which_figure(quickstart_run, tensorboard):
    run = quickstart_run[0].name
    figures = {"locality/about": "Figure 2", "lengthgen/about": "Table 1", "features/about": "Figure 5"}
    for tag, figure in figures.items():
        query = urllib.parse.urlencode({"run": run, "tag": tag})
        card = json.loads(tensorboard(f"/data/plugin/text/text?{query}"))[0]["text"]
        assert figure in card and "Every 5 optimizer steps" in card, card


def test_fit_log_carries_no_lightning_noise(quickstart_run):
    output = quickstart_run[1]
    assert "lcsbench fit: training from step 0 to" in output  # lcsbench's own lines are there
    for noise in ("litlogger", "LeafSpec"):
        assert noise not in output, [line for line in output.splitlines() if noise in line]
