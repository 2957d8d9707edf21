"""Every model class of the paper through every analysis command and callback (issue 13 part 1).

Four tiny checkpoints, each fitted a few steps on the real 32 px render: the global location model (Exp 1/2),
the global colour model, the patch-local location model (Exp 3) and the patch-local model trained on 1-object
scenes only (Figure 4). Each goes through `sample`, `locality`, `features` and `lengthgen` (with a judge at
its resolution) and through the four analysis callbacks, which must all write their outputs. The commands
read the image size from the one denoiser interface (diffusion/denoiser.py), so the patch-local model's full
32 px image is drawn, not its 10 px patches.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from lcsbench.callbacks.ema import PowerFunctionEMA
from lcsbench.callbacks.conditioning_gap import ConditioningGap
from lcsbench.callbacks.features import FeatureCosine
from lcsbench.callbacks.lengthgen import LengthGenCurve
from lcsbench.callbacks.locality import LocalityHeatmaps
from lcsbench.callbacks.samples import SampleGrid
from lcsbench.cli import main as cli_main
from lcsbench.data.datamodule import CLEVRDataModule
from lcsbench.diffusion.denoiser import Denoiser
from lcsbench.models.edm2 import EDM2Diffusion
from lcsbench.models.loaders import load_denoiser
from lcsbench.models.judge import JudgeModule
from lcsbench.models.patch import PatchLocalDiffusion
from lcsbench.nn.edm2 import Precond, preset
from lcsbench.nn.judge import CentreHeatmapNet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODELS = ("global_location", "global_color", "patch_location", "patch_n1")


def build(name: str) -> tuple[L.LightningModule, str, str]:
    """(module, conditioning, training counts) of one model class, at tiny sizes."""
    if name == "global_location":
        return EDM2Diffusion(preset("tiny", label_dim=256), conditioning="location", lr=0.01,
                             lr_rampup_images=1), "location", "1-3"
    if name == "global_color":
        return EDM2Diffusion(preset("tiny", label_dim=8), conditioning="color", lr=0.01,
                             lr_rampup_images=1), "color", "1-3"
    # patch-local: G = 16 cells of 2 px, r = 2, so 10 px patches and a (2r+1)^2 + 2 = 27-dim label
    net = Precond(img_resolution=10, img_channels=3, label_dim=27, model_channels=16, channel_mult=[1, 2],
                  num_blocks=1, attn_resolutions=[])
    module = PatchLocalDiffusion(net, grid_size=16, radius=2, lr=0.01, lr_rampup_images=1)
    return module, "location", "1" if name == "patch_n1" else "1-3"


def data_for(root: Path, conditioning: str, counts: str) -> CLEVRDataModule:
    return CLEVRDataModule(str(root), counts=counts, conditioning=conditioning,
                           label_mode="all" if conditioning == "color" else "single", batch_size=4, num_workers=0,
                           steps_per_epoch=2, shuffle_buffer=8, resolution=32)


def quiet_trainer(root: Path, steps: int, callbacks=(), logger=False) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                     num_sanity_val_steps=0, default_root_dir=str(root), callbacks=list(callbacks))


@pytest.fixture(scope="module")
def checkpoints(clevr_shards, tmp_path_factory):
    """{model name: checkpoint}, plus "judge": a tiny 32 px judge fitted a few steps."""
    root = tmp_path_factory.mktemp("every_model")
    paths = {}
    for name in MODELS:
        torch.manual_seed(0)
        module, conditioning, counts = build(name)
        trainer = quiet_trainer(root / name, 2, [PowerFunctionEMA(sigma_rels=[0.05])])
        trainer.fit(module, data_for(clevr_shards, conditioning, counts))
        paths[name] = root / f"{name}.ckpt"
        trainer.save_checkpoint(paths[name])
    judge = JudgeModule(CentreHeatmapNet(channels=8, levels=2), lr=5e-3)
    trainer = quiet_trainer(root / "judge", 2)
    trainer.fit(judge, data_for(clevr_shards, "location", "1-3"))
    paths["judge"] = root / "judge.ckpt"
    trainer.save_checkpoint(paths["judge"])
    return paths


@pytest.mark.parametrize("name", MODELS)
def test_the_denoiser_says_its_full_image_shape(checkpoints, name):
    denoiser = load_denoiser(checkpoints[name]).denoiser
    assert isinstance(denoiser, Denoiser)
    assert denoiser.image_shape == (3, 32, 32)  # the patch-local model draws whole 32 px images
    assert denoiser.conditioning == ("color" if name == "global_color" else "location")
    assert denoiser.grid_size == (None if name == "global_color" else 16)
    out = denoiser(torch.zeros(1, *denoiser.image_shape), 1.0,
                   torch.zeros(1, 8, dtype=torch.long) if name == "global_color"
                   else torch.zeros(1, 16, 16, dtype=torch.long))
    assert out.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("name", MODELS)
def test_every_analysis_command_runs_on_every_model(checkpoints, name, tmp_path):
    ckpt, judge = str(checkpoints[name]), str(checkpoints["judge"])
    conditioning = "--colors" if name == "global_color" else "--locations"
    wanted = ["red", "blue"] if name == "global_color" else ["paper:2"]
    assert cli_main(["sample", "--ckpt", ckpt, conditioning, *wanted, "--n", "2", "--steps", "2",
                     "--out", str(tmp_path / "grid.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "grid.png").read_bytes()[:8] == PNG_MAGIC
    assert cli_main(["locality", "--ckpt", ckpt, "--out", str(tmp_path / "locality"), "--sigmas", "0.5,5",
                     "--samples", "1", "--sample-steps", "2", "--locations", "2", "--colors", "2",
                     "--device", "cpu"]) == 0
    locality = json.loads((tmp_path / "locality" / "locality.json").read_text())
    assert locality["resolution"] == 32 and (tmp_path / "locality" / "locality_radius.png").exists()
    assert cli_main(["features", "--ckpt", ckpt, "--out", str(tmp_path / "features"), "--sigmas", "1",
                     "--samples", "2", "--sample-steps", "2", "--device", "cpu"]) == 0
    features = json.loads((tmp_path / "features" / "features.json").read_text())
    assert len(features["labels"]) == (8 if name == "global_color" else 12) and features["layers"]
    assert cli_main(["lengthgen", "--ckpt", ckpt, "--judge", judge, "--out", str(tmp_path / "lengthgen"),
                     "--ks", "1-2", "--samples-per-k", "1", "--steps", "2", "--no-oracle", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "lengthgen" / "lengthgen.json").read_text())
    assert report["protocol"]["resolution"] == 32 and sorted(report["rows"]["model"]["per_k"]) == ["1", "2"]
    assert (tmp_path / "lengthgen" / "samples_k2.png").read_bytes()[:8] == PNG_MAGIC


def test_patch_local_locality_maps_are_exactly_zero_outside_the_patch(checkpoints, tmp_path):
    assert cli_main(["locality", "--ckpt", str(checkpoints["patch_location"]), "--out", str(tmp_path),
                     "--sigmas", "0.5,10", "--samples", "1", "--sample-steps", "2", "--locations", "1",
                     "--targets", "16,16", "--device", "cpu"]) == 0
    from lcsbench.analysis.locality import pixel_jacobian

    denoiser = load_denoiser(checkpoints["patch_location"]).denoiser
    cond = torch.zeros(1, 16, 16, dtype=torch.long)
    cond[0, 8, 8] = 1
    x = torch.randn(1, 3, 32, 32)
    heat = pixel_jacobian(denoiser, x, 10.0, cond, [(16, 16)])[0]  # target pixel in cell (8, 8)
    # r = 2 cells of 2 px: the patch of cell (8, 8) spans cells 6..10, pixels 12..21
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[12:22, 12:22] = True
    assert heat[~inside].abs().max() == 0 and heat[inside].abs().max() > 0


@pytest.mark.parametrize("name", MODELS)
def test_every_callback_logs_on_every_model(checkpoints, clevr_shards, name, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = load_denoiser(checkpoints[name], ema=False).train()
    with torch.no_grad():  # two steps leave EDM2's zero-initialised emb gains at 0: open the conditioning path
        for parameter_name, parameter in module.net.named_parameters():
            if parameter_name.endswith("emb_gain"):
                parameter.fill_(0.3)
    conditioning = "color" if name == "global_color" else "location"
    logger = L.pytorch.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    lengthgen = LengthGenCurve(judge=str(checkpoints["judge"]), every_n_steps=1, ks=[1, 2], samples_per_k=1,
                               num_steps=2)
    callbacks = [PowerFunctionEMA(sigma_rels=[0.05]), SampleGrid(every_n_steps=1, num_samples=2, num_steps=2),
                 LocalityHeatmaps(every_n_steps=1, sigmas=[1.0], samples=1, max_targets=1),
                 FeatureCosine(every_n_steps=1, sigmas=[1.0], samples=2), lengthgen,
                 ConditioningGap(every_n_steps=1, sigmas=[2.0], num_images=4)]
    quiet_trainer(tmp_path, 1, callbacks, logger).fit(
        module, data_for(clevr_shards, conditioning, "1" if name == "patch_n1" else "1-3"))
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    images, scalars = set(events.Tags()["images"]), set(events.Tags()["scalars"])
    assert {"samples/ema", "locality/radius", "features/cosines", "lengthgen/curve"} <= images
    assert {"lengthgen/k_max", "features/mean_abs_cosine_off_diagonal", "cond_gap/gap@2", "cond_gap/true@2"} <= scalars
    assert lengthgen.last_report["rows"]["model"]["per_k"]["2"]["samples"] == 1
