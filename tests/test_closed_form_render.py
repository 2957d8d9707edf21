"""Closed forms built from a real render (issue 23): spec files that commands take like checkpoints, the
`closed-form` command (spec, r2, coverage, memorisation), the r2 yardstick and the ClosedFormR2 callback inside a
real fit. All on the tiny Blender render of conftest.py (8 training images per count, 32 px, G = 16)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lcsbench.analysis.closed_form.yardstick import denoised_over_sigmas, r2_per_sigma
from lcsbench.checkpoints import DATA_HPARAMS_KEY, read_checkpoint
from lcsbench.cli import main as cli_main
from lcsbench.data.datamodule import CLEVRDataModule
from lcsbench.diffusion.denoiser import Denoiser
from lcsbench.models.closed_form import (closed_form_from_payload, heldout_batch, is_closed_form_spec,
                                         load_closed_form, render_images, write_spec)


@pytest.fixture(scope="module")
def specs(clevr_shards, tmp_path_factory):
    """Specs of both closed forms, single labels (Exp. 2/3), over the tiny render's train split."""
    folder = tmp_path_factory.mktemp("closed_form_specs")
    for kind in ("local", "empirical"):
        assert cli_main(["closed-form", "spec", "--render", str(clevr_shards), "--kind", kind, "--label-mode",
                         "single", "--out", str(folder / f"{kind}.pt")]) == 0
    return folder / "local.pt", folder / "empirical.pt"


@pytest.fixture(scope="module")
def trained(clevr_shards, tmp_path_factory):
    """A tiny real EDM2 location model fitted 3 steps on the render with single labels, logging ClosedFormR2
    to TensorBoard every 3 steps; returns (checkpoint, TensorBoard log dir)."""
    from lcsbench.callbacks.closed_form import ClosedFormR2
    from lcsbench.callbacks.ema import PowerFunctionEMA
    from lcsbench.models.edm2 import EDM2Diffusion
    from lcsbench.nn.edm2 import preset

    root = tmp_path_factory.mktemp("closed_form_run")
    torch.manual_seed(0)
    module = EDM2Diffusion(net=preset("tiny", label_dim=256), conditioning="location", lr=0.01, lr_rampup_images=1)
    data = CLEVRDataModule(str(clevr_shards), counts="1-3", label_mode="single", batch_size=4, num_workers=0,
                           steps_per_epoch=3, shuffle_buffer=8, resolution=32)
    logger = L.pytorch.loggers.TensorBoardLogger(root, name="run", version=0)
    callbacks = [PowerFunctionEMA(sigma_rels=[0.05], snapshot_every_n_steps=1000),
                 ClosedFormR2(every_n_steps=3, sigmas=[0.5, 5.0], images=4, radius=1)]
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=str(root), callbacks=callbacks)
    trainer.fit(module, data)
    trainer.save_checkpoint(root / "run.ckpt")
    return root / "run.ckpt", Path(logger.log_dir)


def test_a_spec_loads_like_a_checkpoint(specs, clevr_shards):
    from lcsbench.commands.lengthgen import training_setup

    payload = read_checkpoint(specs[0], "")
    assert is_closed_form_spec(payload) and not is_closed_form_spec({"state_dict": {}})
    model = closed_form_from_payload(payload, specs[0])
    from lcsbench.models.loaders import load_denoiser

    assert type(load_denoiser(specs[0])) is type(model)  # every command's loader dispatches a spec here
    denoiser = model.to("cpu").eval().denoiser
    assert isinstance(denoiser, Denoiser)
    assert (denoiser.image_shape, denoiser.conditioning, denoiser.grid_size) == ((3, 32, 32), "location", 16)
    assert (model.conditioning, model.grid_size) == ("location", 16)
    assert model.spec["training_images"] == 24 and model.spec["training_examples"] > 24  # single: one per object
    args = type("Args", (), {"trained_counts": None, "label_mode": None, "ckpt": str(specs[0])})()
    assert training_setup(payload, args) == ((1, 2, 3), "single")  # lengthgen's success rule from the spec
    assert payload[DATA_HPARAMS_KEY]["resolution"] == 32
    x = torch.randn(2, 3, 32, 32)
    cond = torch.zeros(2, 16, 16, dtype=torch.long)
    cond[:, 4, 9] = 1
    assert torch.isfinite(model.denoiser(x, 2.0, cond)).all()


def test_a_spec_refuses_a_changed_or_missing_render(clevr_shards, tmp_path):
    copy = tmp_path / "render"
    shutil.copytree(clevr_shards, copy)
    write_spec(tmp_path / "e.pt", "empirical", copy, "1-3", "all")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "note": "re-rendered"}))
    with pytest.raises(ValueError, match="changed since the closed-form spec"):
        load_closed_form(tmp_path / "e.pt")
    shutil.rmtree(copy)
    with pytest.raises(ValueError, match="which is not there"):
        load_closed_form(tmp_path / "e.pt")
    with pytest.raises(SystemExit, match="no training shards for object counts"):
        cli_main(["closed-form", "spec", "--render", str(clevr_shards), "--kind", "local", "--label-mode", "all",
                  "--counts", "4", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit):  # argparse: an unknown kind
        cli_main(["closed-form", "spec", "--render", str(clevr_shards), "--kind", "global", "--label-mode", "all",
                  "--out", str(tmp_path / "x.pt")])


def test_render_images_and_heldout_labels_are_the_datamodules(clevr_shards):
    data = CLEVRDataModule(str(clevr_shards), counts="1-3", label_mode="single", batch_size=12, num_workers=0,
                           resolution=32)
    batch = next(iter(data.val_dataloader()))  # the 12 held-out images, in shard order
    images, scenes = render_images(clevr_shards, [1, 2, 3], "val")
    torch.testing.assert_close(images, batch["image"], rtol=0, atol=0)
    assert [s["key"] for s in scenes] == batch["key"]
    held, cond = heldout_batch(clevr_shards, [1, 2, 3], "single", 16, 12)
    torch.testing.assert_close(held, batch["image"], rtol=0, atol=0)
    assert torch.equal(cond, batch["cond"])  # the same single label per held-out image


def test_r2_is_one_against_itself_and_zero_against_the_mean_image():
    generator = torch.Generator().manual_seed(0)
    model = torch.randn(3, 5, 3, 4, 4, generator=generator)
    assert torch.allclose(r2_per_sigma(model, model), torch.ones(3))
    assert torch.allclose(r2_per_sigma(model, model.mean(dim=1, keepdim=True).expand_as(model)), torch.zeros(3),
                          atol=1e-6)


def test_closed_form_r2_command_writes_json_and_figure(trained, specs, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "r2"
    assert cli_main(["closed-form", "r2", "--ckpt", str(ckpt), "--spec", str(specs[0]), "--spec", str(specs[1]),
                     "--out", str(out), "--sigmas", "0.2,5", "--images", "4", "--device", "cpu"]) == 0
    report = json.loads((out / "r2.json").read_text())
    assert report["sigmas"] == [0.2, 5.0] and set(report["r2"]) == {"local", "empirical"}
    assert all(np.isfinite(v).all() and len(v) == 2 for v in report["r2"].values())
    assert report["fallbacks"]["local"]["calls"] > 0
    assert (out / "r2.png").read_bytes()[:4] == b"\x89PNG"
    all_labels = tmp_path / "all.pt"
    write_spec(all_labels, "local", report["render"], "1-3", "all")
    with pytest.raises(SystemExit, match="trained with 'single' labels"):
        cli_main(["closed-form", "r2", "--ckpt", str(ckpt), "--spec", str(all_labels), "--out", str(out)])


def test_closed_form_r2_callback_logs_the_yardstick_to_tensorboard(trained, clevr_shards):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lcsbench.analysis.closed_form.yardstick import r2_report
    from lcsbench.models.closed_form import build_closed_form
    from lcsbench.models.loaders import load_denoiser

    ckpt, log_dir = trained
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"closed_form/r2_local@0.5", "closed_form/r2_empirical@5"} <= set(events.Tags()["scalars"])
    assert "closed_form/r2" in events.Tags()["images"]
    # the logged numbers are the yardstick of the EMA weights on the callback's inputs, recomputed here
    images, cond = heldout_batch(clevr_shards, [1, 2, 3], "single", 16, 4)
    model = denoised_over_sigmas(load_denoiser(ckpt).denoiser, images, cond, [0.5, 5.0])
    local = build_closed_form("local", clevr_shards, [1, 2, 3], "single", 16, radius=1).denoiser
    expected = r2_report([0.5, 5.0], model, {"local": denoised_over_sigmas(local, images, cond, [0.5, 5.0])})
    logged = [events.Scalars(f"closed_form/r2_local@{s}")[-1].value for s in ("0.5", "5")]
    assert logged == pytest.approx(expected["r2"]["local"], rel=1e-4, abs=1e-5)


def test_coverage_counts_what_the_training_labels_lack(specs, tmp_path, capsys):
    out = tmp_path / "coverage.json"
    assert cli_main(["closed-form", "coverage", "--spec", str(specs[1]), "--ks", "1-5", "--out", str(out)]) == 0
    per_k = json.loads(out.read_text())["per_k"]
    assert [per_k[str(k)]["requests_fell_back"] for k in (2, 3, 4, 5)] == [1.0] * 4  # single labels: 1 object
    assert cli_main(["closed-form", "coverage", "--spec", str(specs[0]), "--ks", "1,12", "--out", str(out)]) == 0
    per_k = json.loads(out.read_text())["per_k"]
    assert 0 <= per_k["1"]["cells_fell_back_mean"] <= per_k["12"]["cells_fell_back_mean"] <= 256
    assert "k=12" in capsys.readouterr().out


def test_memorisation_puts_training_images_at_distance_zero(specs, clevr_shards, tmp_path):
    from lcsbench.analysis.lengthgen import save_samples

    images, _ = render_images(clevr_shards, [1, 2, 3], "train", 2)  # 6 training images as "samples"
    samples = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    save_samples(tmp_path / "samples.npz", samples, {"ks": [1, 2, 3], "samples_per_k": 2})
    assert cli_main(["closed-form", "memorisation", "--spec", str(specs[1]), "--samples",
                     str(tmp_path / "samples.npz"), "--heldout", "6", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "memorisation.json").read_text())
    assert report["samples_median"] == 0 and report["heldout_median"] > 1
    assert set(report["per_k"]) == {"1", "2", "3"}


@pytest.mark.parametrize("action", ["spec", "r2", "coverage", "memorisation"])
def test_closed_form_command_has_help_for_every_action(action, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["closed-form", action, "--help"])
    assert exit_info.value.code == 0
    assert "--spec" in capsys.readouterr().out or action == "spec"


def test_a_spec_refuses_a_render_whose_shard_changed_under_its_manifest(clevr_shards, tmp_path):
    copy = tmp_path / "render"
    shutil.copytree(clevr_shards, copy)
    write_spec(tmp_path / "e.pt", "empirical", copy, "1-3", "all")
    manifest = json.loads((copy / "manifest.json").read_text())
    shard = manifest["shards"]["n1"]["train"][0]
    data = bytearray((copy / shard).read_bytes())
    data[700] ^= 0xFF  # one byte inside the first member: the manifest (and so the spec's stamp) unchanged
    (copy / shard).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"the shard {copy / shard} does not match the sha256 its manifest recorded"):
        load_closed_form(tmp_path / "e.pt")
    del manifest["shard_sha256"][shard]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="records no sha256 for its shard"):
        render_images(copy, [1])


def test_closed_form_r2_refuses_specs_of_other_counts_and_checks_the_device_first(trained, clevr_shards, tmp_path):
    ckpt, _ = trained
    other_counts = tmp_path / "local-1-2.pt"
    write_spec(other_counts, "local", clevr_shards, "1-2", "single")
    with pytest.raises(SystemExit, match=r"trained on object counts \[1, 2, 3\] but the specs integrate over counts "
                                         r"\[1, 2\]: write specs with --counts 1,2,3"):
        cli_main(["closed-form", "r2", "--ckpt", str(ckpt), "--spec", str(other_counts), "--out", str(tmp_path / "o"),
                  "--device", "cpu"])
    if not torch.cuda.is_available():  # a valid file is never called broken because of the device
        with pytest.raises(SystemExit, match="--device cuda: torch sees no CUDA GPU"):
            cli_main(["closed-form", "r2", "--ckpt", str(ckpt), "--spec", str(other_counts), "--out",
                      str(tmp_path / "o"), "--device", "cuda"])
        with pytest.raises(SystemExit, match="--device cuda: torch sees no CUDA GPU"):
            cli_main(["closed-form", "r2", "--ckpt", str(other_counts), "--spec", str(other_counts), "--out",
                      str(tmp_path / "o"), "--device", "cuda"])
