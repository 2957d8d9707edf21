"""The object judge: heatmap targets and peak extraction, training on real renders, resolution checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from lcsbench.data.datamodule import CLEVRDataModule
from lcsbench.analysis.judge import judge_accuracy
from lcsbench.models.judge import JudgeModule, load_judge
from lcsbench.nn.judge import CentreHeatmapNet, centre_targets, extract_peaks

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "judge.yaml"


def test_peaks_recover_centres_of_a_synthetic_heatmap_exactly():
    centres = torch.tensor([[[10.5, 20.5], [40.5, 5.5], [41.5, 50.5], [60.5, 60.5]]])
    heat = centre_targets(centres, 64, 64, sigma=1.0)[0, 0]
    found, cells = extract_peaks(heat, threshold=0.5)
    order = found[:, 0].argsort()
    assert torch.allclose(found[order], centres[0][centres[0][:, 0].argsort()], atol=1e-5)
    assert len(cells) == 4
    # a plateau (two equal neighbouring maxima) is one object, not two
    plateau = torch.zeros(16, 16)
    plateau[5, 5] = plateau[5, 6] = 0.9
    assert len(extract_peaks(plateau)[0]) == 1
    assert len(extract_peaks(torch.zeros(16, 16))[0]) == 0


def test_targets_ignore_padding_and_peak_at_the_centre_pixel():
    centres = torch.tensor([[[3.7, 2.2], [math.nan, math.nan]]])
    target = centre_targets(centres, 8, 8)
    assert target[0, 0, 2, 3] == 1.0 and (target == 1.0).sum() == 1


def tiny_judge(resolution=None):
    return JudgeModule(CentreHeatmapNet(channels=8, levels=2), resolution=resolution, lr=5e-3)


def test_judge_trains_on_renders_and_detects(clevr_shards, tmp_path):
    data = CLEVRDataModule(str(clevr_shards), counts="1-3", batch_size=6, num_workers=0, steps_per_epoch=6,
                           shuffle_buffer=8)
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    assert batch["centres"].shape[0] == 6 and batch["colors"].shape == batch["centres"].shape[:2]
    assert (~torch.isnan(batch["centres"][..., 0])).sum(1).tolist() == batch["num_objects"].tolist()
    assert batch["visible"].ge(1).sum(1).tolist() == batch["num_objects"].tolist()  # renders record every object
    judge = tiny_judge()
    first = judge.losses(batch)[0].item()
    trainer = L.Trainer(max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path, limit_val_batches=1)
    trainer.fit(judge, datamodule=data)
    assert judge.resolution == 32
    assert judge.losses(batch)[0].item() < first
    assert {"val/exact_count", "val/localization", "val/color"} <= set(trainer.callback_metrics)
    path = tmp_path / "judge.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_judge(path)
    payload = torch.load(path, weights_only=False)  # LightningCLI records `_class_path` among the hparams
    payload["lcsbench_judge"]["module_hparams"]["_class_path"] = "lcsbench.models.judge.JudgeModule"
    torch.save(payload, tmp_path / "cli_judge.ckpt")
    assert load_judge(tmp_path / "cli_judge.ckpt").resolution == 32
    detections = loaded.detect(batch["image"][:2])
    assert len(detections) == 2 and all(d["count"] == len(d["centres"]) == len(d["colors"]) for d in detections)
    with pytest.raises(ValueError, match="trained on 32x32 images but got 64x64"):
        loaded.detect(torch.zeros(1, 3, 64, 64))
    # `lcsbench eval-judge`: one row per object count of the held-out shards (4 images each)
    from lcsbench.commands import eval_judge as script

    out = tmp_path / "judge_eval.json"
    assert script.main(["--judge", str(path), "--data", str(clevr_shards), "--json", str(out)]) == 0
    assert torch.is_grad_enabled()  # judged without gradients, the caller's setting kept
    table = json.loads(out.read_text())
    assert sorted(table) == ["1", "2", "3"] and all(row["images"] == 4 for row in table.values())
    # the rates are the judge's own detections tallied per true count (recounted here image by image)
    recount: dict[int, list[int]] = {}
    for held_out in data.val_dataloader():
        true = (~torch.isnan(held_out["centres"][..., 0])).sum(1).tolist()
        for n, detection in zip(true, loaded.detect(held_out["image"])):
            recount.setdefault(n, []).append(detection["count"] - n)
    for n, errors in recount.items():
        row = table[str(n)]
        assert row["exact_count"] == pytest.approx(sum(e == 0 for e in errors) / len(errors))
        assert row["undercount"] == pytest.approx(sum(e < 0 for e in errors) / len(errors))
        assert row["overcount"] == pytest.approx(sum(e > 0 for e in errors) / len(errors))
    # the visibility breakdown: every image is clear at 0 px, none at a million
    assert script.main(["--judge", str(path), "--data", str(clevr_shards), "--json", str(out), "--clear-pixels", "0"]) == 0
    table = json.loads(out.read_text())
    assert all(row["clear_images"] == 4 and row["clear_exact_count"] == row["exact_count"] for row in table.values())
    by_count = judge_accuracy(loaded, data.val_dataloader(), clear_pixels=10**6)
    assert all(row["clear_images"] == 0 and math.isnan(row["clear_exact_count"]) for row in by_count.values())


def test_judge_refuses_data_at_another_resolution(clevr_shards, tmp_path):
    data = CLEVRDataModule(str(clevr_shards), counts="1-3", batch_size=4, num_workers=0, steps_per_epoch=1)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="set up for 64x64 images but the data is 32x32"):
        trainer.fit(tiny_judge(resolution=64), datamodule=data)


def test_judge_config_parses():
    from lcsbench.commands.trainer import build_cli

    cli = build_cli(["--config", str(CONFIG), "--data.init_args.root", "unused", "--trainer.logger", "false"],
                    run=False)
    assert isinstance(cli.model, JudgeModule) and cli.model.resolution == 64


def test_flip_moves_centres_with_the_image():
    from lcsbench.models.judge import flip_batch

    image = torch.zeros(2, 3, 8, 8)
    image[:, :, 2, 1] = 1.0  # an object at pixel (row 2, col 1): centre (1.5, 2.5)
    centres = torch.tensor([[[1.5, 2.5]], [[1.5, 2.5]]])
    flipped = flip_batch({"image": image, "centres": centres}, torch.tensor([True, False]))
    assert flipped["image"][0, 0, 2, 6] == 1.0 and flipped["centres"][0, 0].tolist() == [6.5, 2.5]
    assert torch.equal(flipped["image"][1], image[1]) and flipped["centres"][1, 0].tolist() == [1.5, 2.5]
    target = centre_targets(flipped["centres"], 8, 8)
    assert target[0, 0, 2, 6] == 1.0


# --- degradations: a sample is blurrier and noisier than a render (issue 14) ----------------------------------


def test_degradation_levels_do_what_they_say():
    from lcsbench.models.judge import degrade, fixed_degradation, random_degradation

    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]).remainder(2).float().mul(1.2).sub(0.6)
    images = checker.expand(2, 3, 16, 16).clone()
    assert torch.equal(degrade(images, *fixed_degradation(2, 0.0, 0.0, 0.0)), images)
    blurred = degrade(images, *fixed_degradation(2, 1.0, 0.0, 0.0))
    assert blurred.std() < 0.25 * images.std()  # a 1 px blur all but removes a 1 px checkerboard
    assert abs(blurred.mean() - images.mean()) < 1e-3  # and keeps the mean
    noisy = degrade(torch.zeros(4, 3, 32, 32), *fixed_degradation(4, 0.0, 0.1, 0.0), torch.Generator().manual_seed(0))
    assert abs(noisy.std().item() - 0.1) < 0.005
    shifted = degrade(torch.zeros(1, 3, 4, 4), *fixed_degradation(1, 0.0, 0.0, 0.05))
    assert shifted[0, :, 0, 0].tolist() == pytest.approx([0.05, -0.05, 0.05])
    blur, noise, gain, offset = random_degradation(64, 1.0, 0.1, 0.05, torch.Generator().manual_seed(0))
    assert 0 <= blur.min() and blur.max() <= 1 and noise.max() <= 0.1 and (gain - 1).abs().max() <= 0.05
    assert degrade(torch.ones(2, 3, 8, 8), *fixed_degradation(2, 0.5, 0.5, 0.5)).max() <= 1  # clamped to [-1, 1]


def test_judge_degrades_the_chosen_fraction_of_a_training_batch():
    from lcsbench.models.judge import JudgeModule
    from lcsbench.nn.judge import CentreHeatmapNet

    images = torch.rand(64, 3, 16, 16) * 2 - 1
    always = JudgeModule(CentreHeatmapNet(channels=4, levels=1), resolution=16, degrade_fraction=1.0)
    changed = (always.degraded(images) != images).flatten(1).any(1)
    assert changed.all()
    half = JudgeModule(CentreHeatmapNet(channels=4, levels=1), resolution=16, degrade_fraction=0.5, noise_max=0.5)
    torch.manual_seed(0)
    assert 16 < (half.degraded(images) != images).flatten(1).any(1).sum() < 48


def test_eval_judge_refuses_a_malformed_degradation(capsys):
    from lcsbench.commands.eval_judge import main

    with pytest.raises(SystemExit):
        main(["--judge", "x.pt", "--data", "d", "--degrade", "1.0,nan"])
    assert "three numbers BLUR,NOISE,COLOR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--judge", "x.pt", "--data", "d", "--degrade", "1.0,-1,0"])
    assert "finite and >= 0" in capsys.readouterr().err
