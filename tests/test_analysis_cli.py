"""The analysis figures, the training callbacks (real Trainer, TensorBoard) and the `locality`/`features` commands."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lcsbench.analysis.features import feature_cosines, mean_difference_vectors
from lcsbench.analysis.locality import grid_cell_centre, locality_profile
from lcsbench.analysis.plots import cosine_matrices, locality_grid, radius_curves, save_figure
from lcsbench.callbacks.closed_form import ClosedFormR2
from lcsbench.callbacks.features import FeatureCosine
from lcsbench.callbacks.lengthgen import LengthGenCurve
from lcsbench.callbacks.locality import LocalityHeatmaps
from lcsbench.cli import main as cli_main
from lcsbench.data.conditioning import PAPER_LOCATIONS
from lcsbench.diffusion.denoiser import BoundDenoiser

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class LocalToyNet(nn.Module):
    """A location-conditioned toy denoiser: D at a pixel depends on the pixels and grid cells within `radius`
    cells, and every conditioner reaches the features through a modulation layer named `emb_linear`."""

    def __init__(self, grid_size: int = 16, radius: int = 1, width: int = 6):
        super().__init__()
        self.grid_size, self.radius = grid_size, radius
        self.conv = nn.Conv2d(3, 3, 1)
        self.emb_linear = nn.Linear(grid_size * grid_size, width, bias=False)

    def box(self, cells: torch.Tensor) -> torch.Tensor:
        kernel = torch.ones(1, 1, 2 * self.radius + 1, 2 * self.radius + 1, dtype=cells.dtype)
        return F.conv2d(cells, kernel, padding=self.radius)

    def forward(self, x, sigma, cond):
        cell = x.shape[-1] // self.grid_size
        scale = 1 + self.emb_linear(cond.flatten(1).to(x.dtype)).mean(1)[:, None, None, None]
        patch = F.interpolate(self.box(F.avg_pool2d(x.mean(1, keepdim=True), cell)), scale_factor=cell)
        labels = F.interpolate(self.box(cond[:, None].to(x.dtype)), scale_factor=cell)
        return self.conv(torch.tanh(x)) * scale * (1 + patch**2) + torch.sin(patch) * labels


class ToyDiffusion(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = LocalToyNet()

    @property
    def denoiser(self) -> BoundDenoiser:
        """The Denoiser protocol every model presents: the callbacks read its kind and grid from it."""
        return BoundDenoiser(self.net, (3, 16, 16), "location", self.net.grid_size, network=self)

    def training_step(self, batch, batch_idx):
        noisy = batch["image"] + 0.5 * torch.randn_like(batch["image"])
        return (self.denoiser(noisy, 0.5, batch["cond"]) - batch["image"]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def toy_batches(count: int = 4) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for i in range(count):
        cond = torch.zeros(16, 16, dtype=torch.long)
        cond[3 + i, 5] = 1
        cond[10, 12 - i] = 1
        batches.append({"image": torch.rand(3, 16, 16, generator=generator) * 2 - 1, "cond": cond})
    return batches


def tensorboard_tags(log_dir: Path) -> dict[str, set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    return {"images": set(tags["images"]), "scalars": set(tags["scalars"])}


def test_figures_are_written(tmp_path):
    torch.manual_seed(0)
    net = LocalToyNet().eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    cond = toy_batches(1)[0]["cond"][None].repeat(2, 1, 1)
    profile = locality_profile(net, images, cond, [0.1, 1.0, 10.0], [(3, 5)],
                               conditioner_centres=lambda c: grid_cell_centre(c, 16, 16))
    figure = locality_grid(profile)
    maps = [axis for axis in figure.axes if axis.images]  # colourbars are axes too
    assert len(maps) == 3 * (3 + len(profile.conditioners))
    assert len(figure.axes) - len(maps) == 3 * (1 + len(profile.conditioners))  # a colourbar per map
    vectors = mean_difference_vectors(net, images, [1.0], torch.eye(256)[:4].view(4, 16, 16), site="scale")
    paths = [save_figure(figure, tmp_path / "grid.png"), save_figure(radius_curves(profile), tmp_path / "r.png"),
             save_figure(cosine_matrices(feature_cosines(vectors, list("abcd"))), tmp_path / "cos.png")]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_callbacks_log_figures_and_radii_to_tensorboard(tmp_path):
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="toy", version=0)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[LocalityHeatmaps(every_n_steps=2, sigmas=[0.2, 5.0], samples=1),
                                   FeatureCosine(every_n_steps=2, sigmas=[1.0], samples=2, average=["*"],
                                                 site="scale")])
    module = ToyDiffusion()
    trainer.fit(module, DataLoader(toy_batches(), batch_size=2))
    assert module.training  # the callbacks restore train mode
    tags = tensorboard_tags(Path(logger.log_dir))
    assert {"locality/grid_t0", "locality/grid_t1", "locality/radius", "features/cosines"} <= tags["images"]
    assert {"locality/pixel_radius90@sigma=0.2", "locality/pixel_radius90@sigma=5",
            "locality/conditional_radius90@sigma=0.2", "features/mean_abs_cosine_off_diagonal"} <= tags["scalars"]


def test_callback_arguments_are_checked():
    with pytest.raises(ValueError, match="every_n_steps must be a positive"):
        LocalityHeatmaps(every_n_steps=0)


@pytest.mark.parametrize("command", ["locality", "features"])
def test_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--ckpt" in capsys.readouterr().out


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        cli_main(["locality", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path)])


def test_radius_is_nan_free_in_json_summaries():
    profile_sigmas = [0.5]
    net = LocalToyNet().eval()
    cond = torch.zeros(1, 16, 16, dtype=torch.long)
    profile = locality_profile(net, torch.zeros(1, 3, 16, 16), cond, profile_sigmas, [(8, 8)], conditional=False)
    summary = profile.summary()
    assert "conditioners" not in summary
    assert all(v is None or not math.isnan(v) for v in summary["pixel_radius_mean"])


@pytest.mark.parametrize("preset", sorted((Path(__file__).parents[1] / "callbacks").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_callback_presets_append_to_an_experiments_callbacks(preset, tmp_path):
    """Each preset parses and instantiates, and appends (callbacks+) to callbacks an experiment already has."""
    from jsonargparse import ActionConfigFile, ArgumentParser
    from lightning.pytorch import Callback

    experiment = tmp_path / "experiment.yaml"
    experiment.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.LearningRateMonitor\n")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--trainer.callbacks", type=list[Callback] | None, default=None)
    config = parser.parse_args(["--config", str(experiment), "--config", str(preset)])
    callbacks = parser.instantiate(config).trainer.callbacks
    assert type(callbacks[0]).__name__ == "LearningRateMonitor"
    analyses = (LocalityHeatmaps, FeatureCosine, LengthGenCurve, ClosedFormR2)
    assert len(callbacks) > 1 and all(isinstance(c, analyses) for c in callbacks[1:])


@pytest.fixture(scope="module")
def trained_checkpoint(clevr_shards, tmp_path_factory):
    """A real EDM2Diffusion (tiny U-Net, 32x32, location) fitted a few steps on the real render, with the
    power-function EMA and both analysis callbacks logging to TensorBoard; returns (checkpoint, log dir)."""
    from lcsbench.callbacks.ema import PowerFunctionEMA
    from lcsbench.data.datamodule import CLEVRDataModule
    from lcsbench.models.edm2 import EDM2Diffusion
    from lcsbench.nn.edm2 import preset

    root = tmp_path_factory.mktemp("analysis_run")
    torch.manual_seed(0)
    module = EDM2Diffusion(net=preset("tiny", label_dim=256), conditioning="location", lr=0.01,
                           lr_rampup_images=1)
    data = CLEVRDataModule(str(clevr_shards), counts="1-3", batch_size=4, num_workers=0, steps_per_epoch=3,
                           shuffle_buffer=8, resolution=32)
    logger = L.pytorch.loggers.TensorBoardLogger(root, name="run", version=0)
    ema = PowerFunctionEMA(sigma_rels=[0.05, 0.10], snapshot_every_n_steps=1000)
    analyses = [LocalityHeatmaps(every_n_steps=3, sigmas=[0.1, 5.0], samples=1, max_targets=1),
                FeatureCosine(every_n_steps=3, sigmas=[1.0], samples=2)]
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=str(root), callbacks=[ema, *analyses])
    trainer.fit(module, data)
    ckpt = root / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt, Path(logger.log_dir)


def test_callbacks_run_inside_a_real_edm2_fit_with_ema(trained_checkpoint):
    _, log_dir = trained_checkpoint
    tags = tensorboard_tags(log_dir)
    assert {"locality/grid_t0", "locality/radius", "features/cosines"} <= tags["images"]
    assert "locality/pixel_radius90@sigma=0.1" in tags["scalars"]


def test_locality_command_writes_json_and_figures(trained_checkpoint, tmp_path):
    import json

    ckpt, _ = trained_checkpoint
    out = tmp_path / "locality"
    assert cli_main(["locality", "--ckpt", str(ckpt), "--out", str(out), "--sigmas", "0.2,4", "--locations", "2",
                     "--samples", "1", "--sample-steps", "2"]) == 0
    report = json.loads((out / "locality.json").read_text())
    assert report["kind"] == "location" and report["sigmas"] == [0.2, 4.0] and report["ema"] is True
    assert len(report["pixels"]) == 2 and len(report["conditioners"]) == 2
    assert len(report["pixel_radius"]) == 2 and all(len(row) == 2 for row in report["pixel_radius"])
    for name in ("locality_grid_t0.png", "locality_grid_t1.png", "locality_radius.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert report["scenes"] == 1 and report["pixel_radius_scene_std"] == [0.0, 0.0]
    # several scenes: the first is the paper's first k locations, the others random k-subsets; mean and spread
    assert cli_main(["locality", "--ckpt", str(ckpt), "--out", str(out), "--sigmas", "0.2,4", "--locations", "2",
                     "--samples", "1", "--sample-steps", "2", "--scenes", "3"]) == 0
    report = json.loads((out / "locality.json").read_text())
    assert report["scenes"] == 3 and len(set(map(tuple, report["scene_conditioned"]))) > 1
    assert report["scene_conditioned"][0] == [f"{x:.2f},{y:.2f}" for x, y in PAPER_LOCATIONS[:2]]
    per_scene = np.array(report["pixel_radius_per_scene"], dtype=float)
    assert per_scene.shape == (3, 2)
    assert np.allclose(report["pixel_radius_mean"], per_scene.mean(0)) and np.allclose(
        report["pixel_radius_scene_std"], per_scene.std(0))
    assert len(report["pixel_radius_without_skip_mean"]) == 2
    with np.load(out / "locality_maps.npz") as maps:
        assert maps["heat_without_skip"].shape == maps["heat"].shape
    with pytest.raises(SystemExit, match="outside the 32x32 image"):
        cli_main(["locality", "--ckpt", str(ckpt), "--out", str(out), "--targets", "40,3", "--sigmas", "1",
                  "--sample-steps", "2"])


def test_features_command_writes_json_and_figure(trained_checkpoint, tmp_path, capsys):
    import json

    ckpt, _ = trained_checkpoint
    out = tmp_path / "features"
    assert cli_main(["features", "--ckpt", str(ckpt), "--out", str(out), "--sigmas", "0.5,5", "--samples",
                     "2"]) == 0
    report = json.loads((out / "features.json").read_text())
    assert len(report["labels"]) == 12 and report["layers"][0] == "unet.enc.32x32_block0"  # the modulated site
    assert report["site"] == "modulated" and report["images"] == "samples"
    # the paper's feature space: the first two encoder resolutions of the 32 px net (32x32 and 16x16)
    assert report["averaged_layers"] == [n for n in report["layers"] if n.startswith(("unet.enc.32x32",
                                                                                      "unet.enc.16x16"))]
    assert set(report["per_resolution"]) == {"enc 32x32", "enc 16x16", "enc 8x8", "dec 8x8", "dec 16x16",
                                             "dec 32x32"}
    assert report["baseline"]["average_mean_abs_off_diagonal"] is not None  # the chance level beside it
    assert all(report["per_layer"][name][i][i] in (1.0, None) for name in report["layers"] for i in range(12))
    assert (out / "feature_cosines.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(SystemExit, match=r"layer 'unet\.enc\.nope' does not exist.*unet\.enc\.32x32_block0"):
        cli_main(["features", "--ckpt", str(ckpt), "--out", str(out), "--layers", "unet.enc.nope"])
