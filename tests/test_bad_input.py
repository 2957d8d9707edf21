"""Bad input is refused before any compute, with what was expected (issue 17, items 8-10)."""

from __future__ import annotations

import json

import lightning as L
import pytest

from lcsbench.cli import main as cli_main
from lcsbench.data.datamodule import CLEVRDataModule
from lcsbench.data.layouts import LayoutError, load_layout_file
from lcsbench.models.edm2 import EDM2Diffusion
from lcsbench.nn.edm2 import preset


@pytest.mark.parametrize("command", ["test", "predict"])
def test_trainer_loops_the_models_lack_are_not_offered(command, capsys):
    assert cli_main([command, "--config", "configs/quickstart.yaml"]) == 2
    assert f"unknown command {command!r}" in capsys.readouterr().err


@pytest.mark.parametrize("sigmas", ["nan", "0.5,inf", "-1", "0"])
def test_noise_levels_must_be_positive_and_finite(sigmas, tmp_path):
    for command in ("locality", "features"):
        with pytest.raises(SystemExit, match="positive, finite numbers"):
            cli_main([command, "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path), "--sigmas", sigmas])


@pytest.mark.parametrize("flags, message", [
    (["--fraction", "2"], r"--fraction .* in \(0, 1\]"),
    (["--samples", "0"], "need --samples >= 1"),
])
def test_locality_options_are_checked_first(flags, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        cli_main(["locality", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path), *flags])


@pytest.mark.parametrize("flags, message", [
    (["--locations", "paper:abc", "--out", "g.png"], "paper:K takes a whole number K in 0..12"),
    (["--colors", "paper:x", "--out", "g.png"], "paper:K takes a whole number K in 0..8"),
    (["--locations", "paper:2", "--out", "grid"], "--out is the PNG grid to write"),
])
def test_sample_options_are_checked_first(flags, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        cli_main(["sample", "--ckpt", str(tmp_path / "none.ckpt"), *flags])


def test_a_layout_grid_of_zero_cells_is_refused(tmp_path):
    path = tmp_path / "layout.json"
    path.write_text(json.dumps({"grid_size": 0, "scenes": [[{"grid": [0, 0]}]]}))
    with pytest.raises(LayoutError, match="grid_size must be a whole number of cells per side >= 1"):
        load_layout_file(path, 32)


def test_fit_refuses_a_network_of_another_resolution_than_the_data(clevr_shards, tmp_path):
    model = EDM2Diffusion(preset("tiny", label_dim=256, img_resolution=64))  # the render is 32 px
    data = CLEVRDataModule(str(clevr_shards), counts="1-3", batch_size=2, num_workers=0, steps_per_epoch=1,
                           shuffle_buffer=4, resolution=32)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"the data is 32x32 but the model denoises 64x64 images.*"
                                         r"img_resolution: 32"):
        trainer.fit(model, data)


def test_render_refuses_zero_workers(tmp_path, capsys):
    with pytest.raises(SystemExit):  # 0 silently meant "all cores"
        cli_main(["render", "--out", str(tmp_path / "x"), "--workers", "0"])
    assert "--workers is the number of Blender processes at once, >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_reconstruct_ema_refuses_a_step_beyond_the_last_snapshot(tmp_path):
    snapshots = tmp_path / "phema"
    snapshots.mkdir()
    for step in (2, 4):  # only the names are read before the check
        (snapshots / f"phema-{step:08d}-0.050.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"--step 9 lies beyond the last snapshot \(step 4\)"):
        cli_main(["reconstruct-ema", "--snapshots", str(snapshots), "--sigma-rel", "0.05", "--step", "9",
                  "--out", str(tmp_path / "ema.pt")])
