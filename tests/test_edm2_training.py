"""EDM2Diffusion on real tiny CLEVR shards: loss falls, exact resume, EMA, checkpoints, CLI, configs, DDP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lcsbench.callbacks.ema import PowerFunctionEMA
from lcsbench.callbacks.samples import SampleGrid
from lcsbench.data.datamodule import CLEVRDataModule
from lcsbench.models.edm2 import EDM2Diffusion
from lcsbench.models.loaders import load_denoiser
from lcsbench.nn.edm2 import Precond

REPO = Path(__file__).resolve().parents[1]


def shipped_stacks() -> list[tuple[Path, ...]]:
    """Every config a user runs: each whole file (not a shared model section, not a study scale's layer or delta),
    and each study experiment's stack at each scale (base, [patch,] delta)."""
    import lcsbench.study.experiments  # noqa: F401 - registers the study's experiments
    from lcsbench.study.records import REGISTRY
    from lcsbench.study.scales import config_paths

    whole = [(p,) for p in sorted((REPO / "configs").rglob("*.yaml"))
             if "models" not in p.relative_to(REPO / "configs").parts and "reproduce" not in p.parts]
    stacks = {tuple(REPO / p if not p.is_absolute() else p for p in config_paths(record, scale))
              for record in REGISTRY.values() if record.trained
              for scale in record.configs if scale != "paper"}  # the paper scale's stacks are whole files
    return whole + sorted(stacks)


CONFIGS = shipped_stacks()


def micro_net(label_dim: int = 256, model_channels: int = 16) -> Precond:
    """A CPU-cheap EDM2 U-Net at 32x32: 2 levels, attention at 16x16 and in the bottleneck."""
    return Precond(img_resolution=32, img_channels=3, label_dim=label_dim, model_channels=model_channels,
                   channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16], channels_per_head=16)


def micro_module(**kwargs) -> EDM2Diffusion:
    torch.manual_seed(0)
    defaults = dict(lr=0.01, lr_decay_steps=1000, lr_rampup_images=16, val_sigmas=[0.2, 1.0, 5.0])
    net = kwargs.pop("net", None) or micro_net()
    return EDM2Diffusion(net=net, **{**defaults, **kwargs})


def micro_data(root, **kwargs) -> CLEVRDataModule:
    defaults = dict(counts="1-3", batch_size=4, num_workers=0, steps_per_epoch=4, shuffle_buffer=8)
    return CLEVRDataModule(str(root), **{**defaults, **kwargs})


def trainer(tmp_path, max_steps: int, callbacks=(), **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                    enable_checkpointing=False, default_root_dir=str(tmp_path))
    return L.Trainer(max_steps=max_steps, callbacks=list(callbacks), **{**defaults, **kwargs})


def test_loss_falls_in_a_short_cpu_run(clevr_shards, tmp_path):
    module, data = micro_module(), micro_data(clevr_shards, steps_per_epoch=60)
    before = trainer(tmp_path, 0, limit_val_batches=None).validate(module, data, verbose=False)[0]
    trainer(tmp_path, 60).fit(module, data)
    after = trainer(tmp_path, 0, limit_val_batches=None).validate(module, data, verbose=False)[0]
    assert set(before) >= {"val/loss@0.2", "val/loss@1", "val/loss@5"}
    assert after["val/loss"] < 0.75 * before["val/loss"], (before, after)
    # forced weight normalization: every stored MPConv row is unit-RMS after training
    for name, weight in module.net.named_parameters():
        if weight.ndim >= 2:
            rms = weight.detach().flatten(1).pow(2).mean(1).sqrt()
            assert torch.allclose(rms, torch.ones_like(rms), atol=1e-4), name


def test_resume_continues_the_same_run(clevr_shards, tmp_path):
    def run(max_steps, root, ckpt_path=None):
        module = micro_module()
        ema = PowerFunctionEMA(sigma_rels=[0.05, 0.10])
        fit = trainer(root, max_steps, [ema])
        fit.fit(module, micro_data(clevr_shards, steps_per_epoch=3), ckpt_path=ckpt_path)
        fit.save_checkpoint(root / "end.ckpt")
        return module, ema, fit

    straight, straight_ema, _ = run(4, tmp_path / "straight")
    run(3, tmp_path / "first")  # ends exactly at an epoch boundary of the training stream
    resumed, resumed_ema, fit = run(4, tmp_path / "second", ckpt_path=tmp_path / "first" / "end.ckpt")
    assert fit.global_step == 4 and resumed_ema.step == 4
    assert fit.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert {int(s["step"]) for s in fit.optimizers[0].state.values()} == {4}  # Adam moments continued
    # same data (the epoch-1 stream), noise re-seeded from the step: the resumed step is the uninterrupted one
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    for a, b in zip(straight_ema.averages[1].values(), resumed_ema.averages[1].values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_ema_checkpoint_and_load_denoiser(clevr_shards, tmp_path):
    module = micro_module()
    ema = PowerFunctionEMA(sigma_rels=[0.05, 0.10], snapshot_every_n_steps=2, snapshot_dir=str(tmp_path / "phema"))
    fit = trainer(tmp_path, 4, [ema])
    fit.fit(module, micro_data(clevr_shards))
    ckpt = tmp_path / "run.ckpt"
    fit.save_checkpoint(ckpt)

    raw = load_denoiser(ckpt, ema=False)
    for name, p in module.net.named_parameters():
        assert torch.equal(raw.net.state_dict()[name], p.detach())
    averaged = load_denoiser(ckpt)  # EMA (sigma_rel 0.05) by default
    assert not averaged.training and averaged.conditioning == "location"
    for name, value in ema.averages[0].items():
        assert torch.equal(averaged.net.state_dict()[name], value)
    assert not torch.equal(averaged.net.unet.out_gain, module.net.unet.out_gain)
    wide = load_denoiser(ckpt, sigma_rel=0.10)
    assert torch.equal(wide.net.unet.out_gain, ema.averages[1]["unet.out_gain"])
    with pytest.raises(ValueError, match="was not tracked"):
        load_denoiser(ckpt, sigma_rel=0.2)

    # the denoiser interface takes the structured conditioner and encodes it itself
    cond = torch.zeros(2, 16, 16, dtype=torch.long)
    cond[0, 4, 5] = cond[1, 10, 3] = 1
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        d = averaged.denoiser(x, torch.tensor(1.0), cond)
        labels = torch.nn.functional.normalize(cond.flatten(1).float(), dim=1)
        assert torch.equal(d, averaged.net(x, torch.tensor(1.0), labels))

    # post-hoc: reconstructing a tracked profile at a snapshot step gives that tracked EMA back
    from lcsbench.cli import main as lcsbench

    snapshots = sorted((tmp_path / "phema").glob("phema-*.pt"))
    assert [p.name for p in snapshots] == ["phema-00000002-0.050.pt", "phema-00000002-0.100.pt",
                                           "phema-00000004-0.050.pt", "phema-00000004-0.100.pt"]
    out = tmp_path / "ema-0.100.pt"
    assert lcsbench(["reconstruct-ema", "--snapshots", str(tmp_path / "phema"), "--sigma-rel", "0.1",
                     "--out", str(out)]) == 0
    rebuilt = load_denoiser(out)
    for name, value in ema.averages[1].items():
        assert torch.allclose(rebuilt.net.state_dict()[name], value, atol=2e-3, rtol=2e-3), name

    grid = tmp_path / "grid.png"
    assert lcsbench(["sample", "--ckpt", str(out), "--locations", "paper:3", "--n", "4", "--steps", "3",
                     "--out", str(grid), "--device", "cpu"]) == 0
    with pytest.raises(SystemExit, match="location-conditioned model but --colors was given"):
        lcsbench(["sample", "--ckpt", str(out), "--colors", "red", "--out", str(grid), "--device", "cpu"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_denoiser(tmp_path / "missing.ckpt")
    from PIL import Image

    assert Image.open(grid).size == (2 * 97 + 1, 2 * 97 + 1)  # 2 x 2 tiles of 32 px shown at 96, 1 px gaps


def test_sample_grid_callback_logs_ema_samples_to_tensorboard(clevr_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = L.pytorch.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    fit = trainer(tmp_path, 2, [PowerFunctionEMA(), SampleGrid(every_n_steps=2, num_samples=4, num_steps=2)],
                  logger=logger, log_every_n_steps=1)
    fit.fit(micro_module(), micro_data(clevr_shards))
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert {"samples/ema", "samples/real"} <= set(events.Tags()["images"])
    assert "train/loss" in events.Tags()["scalars"]


def test_nan_loss_stops_with_step_and_batch(clevr_shards, tmp_path):
    module = micro_module()
    module.net.unet.out_gain.data.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss is nan at global step 0 \(batch 0"):
        trainer(tmp_path, 2).fit(module, micro_data(clevr_shards))


def test_label_dim_must_match_the_conditioner(clevr_shards, tmp_path):
    with pytest.raises(ValueError, match=r"label_dim is 256 but 'color' conditioning gives 8-dim labels"):
        EDM2Diffusion(net=micro_net(label_dim=256), conditioning="color")
    module = micro_module(net=micro_net(label_dim=8), conditioning="color")
    with pytest.raises(ValueError, match="the data's conditioning is 'location' but the model's is 'color'"):
        trainer(tmp_path, 1).fit(module, micro_data(clevr_shards))


def test_checkpoint_from_another_architecture_is_refused(clevr_shards, tmp_path):
    fit = trainer(tmp_path, 1)
    fit.fit(micro_module(), micro_data(clevr_shards))
    ckpt = tmp_path / "small.ckpt"
    fit.save_checkpoint(ckpt)
    wider = micro_module(net=micro_net(model_channels=32))
    with pytest.raises(ValueError, match=r"different network.*model_channels.*\(16, 32\)"):
        trainer(tmp_path, 2).fit(wider, micro_data(clevr_shards), ckpt_path=ckpt)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"judge.fc.weight": torch.zeros(2, 2)}}, foreign)
    with pytest.raises(ValueError, match="not an lcsbench diffusion checkpoint"):
        load_denoiser(foreign)


# --- LightningCLI and shipped configs ------------------------------------------------------------------------


@pytest.mark.parametrize("stack", CONFIGS, ids=["+".join(str(c.relative_to(REPO / "configs")) for c in stack)
                                                  for stack in CONFIGS])
def test_every_shipped_config_parses_and_instantiates(stack, clevr_shards, tmp_path, monkeypatch):
    from lcsbench.commands.trainer import build_cli

    monkeypatch.chdir(tmp_path)
    config = stack[0]  # the whole file, or the scale's base (which states label_scale)
    layers = [item for path in stack for item in ("--config", str(path))]
    cli = build_cli([*layers, "--data.init_args.root", str(clevr_shards),
                     "--trainer.accelerator", "cpu", "--trainer.devices", "1"], run=False)
    assert isinstance(cli.model, L.LightningModule) and isinstance(cli.datamodule, L.LightningDataModule)
    if isinstance(cli.model, EDM2Diffusion):  # diffusion experiments (other configs: the judge, ...)
        assert cli.model.net.label_dim == cli.model.expected_label_dim()
        assert cli.model.conditioning == cli.datamodule.conditioning
        assert any(isinstance(cb, PowerFunctionEMA) for cb in cli.trainer.callbacks)
        # the full-image resolution (patch-local: G cells of m px) is the data's: a _128 config is 128 px throughout
        net = getattr(cli.model, "local", cli.model.net)
        assert net.img_resolution == cli.config.data.init_args.resolution
        assert "label_scale:" in config.read_text()  # stated explicitly (App. E.1's counts or unit)


def test_callback_presets_append_to_an_experiment(clevr_shards, tmp_path, monkeypatch):
    from lcsbench.commands.trainer import build_cli

    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(REPO / "configs" / "quickstart.yaml"), "--config",
                     str(REPO / "callbacks" / "analyses.yaml"), "--data.init_args.root", str(clevr_shards)], run=False)
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    assert {"PowerFunctionEMA", "SampleGrid", "LocalityHeatmaps", "FeatureCosine"} <= set(names)


def test_unknown_config_key_is_rejected_at_parse_time(clevr_shards, tmp_path, monkeypatch, capsys):
    from lcsbench.commands.trainer import build_cli

    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "configs" / "quickstart.yaml").read_text().replace("    lr: 0.01", "    learning_rate: 0.01"))
    with pytest.raises(SystemExit):
        build_cli(["--config", str(bad), "--data.init_args.root", str(clevr_shards)], run=False)
    assert "learning_rate" in capsys.readouterr().err


def test_cli_fit_trains_and_writes_checkpoint_and_snapshots(clevr_shards, tmp_path, monkeypatch):
    from lcsbench.cli import main as lcsbench

    monkeypatch.chdir(tmp_path)
    assert lcsbench(["fit", "--config", str(REPO / "configs" / "quickstart.yaml"),
                     "--config", str(micro_config(tmp_path, clevr_shards))]) == 0
    version = tmp_path / "runs" / "quickstart" / "lightning_logs" / "version_0"
    assert (version / "checkpoints" / "last.ckpt").is_file() and (version / "config.yaml").is_file()
    assert len(list((version / "phema").glob("phema-00000004-*.pt"))) == 2
    assert torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_resumed_fit_continues_in_its_run_folder(clevr_shards, tmp_path, monkeypatch, capsys):
    """Issue 17 item 7: a resume wrote a new version_N with its own phema/, and reconstruct-ema then silently used
    only the post-resume snapshots."""
    from lcsbench.cli import main as lcsbench

    monkeypatch.chdir(tmp_path)
    keep_all = tmp_path / "keep_all.yaml"  # every checkpoint, not only the last
    keep_all.write_text("""
trainer:
  callbacks:
    - class_path: lcsbench.callbacks.ema.PowerFunctionEMA
      init_args: {snapshot_every_n_steps: 2}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {every_n_train_steps: 2, save_last: true, save_top_k: -1}
""")
    configs = ["--config", str(REPO / "configs" / "quickstart.yaml"),
               "--config", str(micro_config(tmp_path, clevr_shards)), "--config", str(keep_all)]
    assert lcsbench(["fit", *configs]) == 0
    run = tmp_path / "runs" / "quickstart" / "lightning_logs" / "version_0"
    stale = sorted(p.name for p in (run / "phema").glob("phema-00000004-*.pt"))
    # resume from the step-2 checkpoint, as after a crash between step 4's snapshot and its checkpoint
    assert lcsbench(["fit", *configs, "--trainer.max_steps", "6",
                     "--ckpt_path", str(run / "checkpoints" / "epoch=0-step=2.ckpt")]) == 0
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # no version_1
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) == [
        "epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=1-step=6.ckpt", "last.ckpt"]  # no last-v1.ckpt
    assert [p.name for p in (run / "checkpoints" / "superseded-at-step-2").iterdir()] == ["epoch=0-step=4.ckpt"]
    steps = sorted({p.name.split("-")[1] for p in (run / "phema").glob("phema-*.pt")})
    assert steps == ["00000002", "00000004", "00000006"]  # one chain, step 4 written again by the resumed run
    superseded = run / "phema" / "superseded-at-step-2"
    assert sorted(p.name for p in superseded.iterdir()) == stale  # the abandoned trajectory's, kept aside
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # TensorBoard reads both as one run
    capsys.readouterr()
    assert lcsbench(["reconstruct-ema", "--snapshots", str(run / "phema"), "--sigma-rel", "0.08",
                     "--out", str(tmp_path / "ema.pt")]) == 0
    assert "at step 6 from 6 snapshots at 3 steps (2..6)" in capsys.readouterr().err


def test_failed_fit_leaves_no_run_folder(clevr_shards, tmp_path, monkeypatch):
    from lcsbench.cli import main as lcsbench

    monkeypatch.chdir(tmp_path)
    configs = ["--config", str(REPO / "configs" / "quickstart.yaml"),
               "--config", str(micro_config(tmp_path, clevr_shards))]
    with pytest.raises(ValueError, match="the data is 32x32 but the model denoises 64x64 images"):
        lcsbench(["fit", *configs, "--model.init_args.net.init_args.img_resolution", "64"])
    runs = tmp_path / "runs" / "quickstart" / "lightning_logs"
    assert not runs.exists() or not list(runs.iterdir()), list(runs.rglob("*"))  # the next run is version_0


def micro_config(directory: Path, root) -> Path:
    """A second --config shrinking the quickstart experiment to the micro net and 4 steps."""
    path = directory / "micro.yaml"
    path.write_text(f"""
trainer:
  max_steps: 4
  limit_val_batches: 2
  enable_progress_bar: false
  callbacks:
    - class_path: lcsbench.callbacks.ema.PowerFunctionEMA
      init_args: {{snapshot_every_n_steps: 2}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{every_n_train_steps: 2, save_last: true}}
model:
  init_args:
    net:
      init_args: {{model_channels: 16, channel_mult: [1, 2], attn_resolutions: [16], channels_per_head: 16}}
data:
  init_args: {{root: "{root}", batch_size: 4, num_workers: 0, steps_per_epoch: 4}}
""")
    return path


@pytest.mark.slow  # DDP: two gloo ranks in subprocesses
def test_ddp_two_cpu_processes_fit(clevr_shards, tmp_path):
    """`strategy=ddp` on 2 gloo CPU ranks, in a subprocess with a hard timeout (a DDP hang never fails by itself)."""
    command = [sys.executable, "-m", "lcsbench", "fit", "--config", str(REPO / "configs" / "quickstart.yaml"),
               "--config", str(micro_config(tmp_path, clevr_shards)), "--trainer.strategy", "ddp",
               "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"2-rank DDP fit did not finish in 180 s (hang?):\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    ckpt = tmp_path / "runs" / "quickstart" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 4
    assert state["callbacks"]["PowerFunctionEMA"]["step"] == 4


def test_bf16_mixed_training_step_runs_and_keeps_fp32_weights(clevr_shards, tmp_path):
    # the GPU recipe (precision: bf16-mixed) on CPU autocast: MP arithmetic stays fp32, weights stay fp32
    module = micro_module()
    trainer(tmp_path, 2, precision="bf16-mixed").fit(module, micro_data(clevr_shards))
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in module.net.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        d = module.eval().denoiser(x, torch.tensor(1.0), torch.zeros(2, 16, 16, dtype=torch.long))
    assert d.dtype == torch.float32 and torch.isfinite(d).all()


class CheckEveryThirdBatch(EDM2Diffusion):
    """The real module with the host check of the loss every third batch, as on a GPU with log_every_n_steps 3."""

    def loss_check_interval(self) -> int:
        return 3


def test_a_nan_loss_found_by_a_later_check_is_named_by_its_own_step(clevr_shards, tmp_path):
    # on an accelerator the loss is read every log_every_n_steps batches (no host sync per step, issue 24)
    for max_steps in (5, 2):  # found by the in-loop check at batch 2, or by the last check when training ends
        module = CheckEveryThirdBatch(net=micro_net(), lr=0.01, lr_decay_steps=1000, lr_rampup_images=16)
        module.net.unet.out_gain.data.fill_(float("nan"))
        with pytest.raises(FloatingPointError, match=r"loss is nan at global step 0 \(batch 0, first keys \['n\d_"
                                                     r"train_\d+'.*found at step 2\)"):
            trainer(tmp_path, max_steps).fit(module, micro_data(clevr_shards))


def test_samplers_and_analyses_run_the_network_in_bf16_where_inference_autocasts():
    module = micro_module().eval()
    with torch.no_grad():
        for name, param in module.net.named_parameters():
            if name.endswith("gain"):
                param.fill_(0.5)  # every path carries signal
    dtypes = []
    module.net.unet.enc["32x32_block0"].register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    x, cond = torch.randn(2, 3, 32, 32), torch.zeros(2, 16, 16, dtype=torch.long)
    cond[:, 3, 4] = 1
    with torch.no_grad():
        plain = module.denoiser(x, torch.tensor(1.0), cond)  # CPU: not an autocast device by default
        assert dtypes == [torch.float32] and torch.equal(plain, module.denoise(x, torch.tensor(1.0), cond))
        module.inference_autocast_devices = ("cpu",)  # what "cuda" gets by default
        autocast = module.denoiser(x, torch.tensor(1.0), cond)
    assert dtypes[-1] == torch.bfloat16 and autocast.dtype == torch.float32
    assert 0 < (autocast - plain).abs().max() < 0.05


def test_channels_last_trains_with_fused_adam_and_computes_the_same_function(clevr_shards, tmp_path):
    module = micro_module(channels_last=True)
    fit = trainer(tmp_path, 3, precision="bf16-mixed")
    fit.fit(module, micro_data(clevr_shards))
    assert fit.optimizers[0].defaults["fused"] is True  # one fused Adam kernel for every parameter
    convs = [w for w in module.net.parameters() if w.ndim == 4]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)  # kept through training
    assert all(torch.isfinite(w).all() for w in module.net.parameters())
    plain = micro_module()
    plain.net.load_state_dict(module.net.state_dict())
    x, cond = torch.randn(2, 3, 32, 32), torch.zeros(2, 16, 16, dtype=torch.long)
    with torch.no_grad():
        assert torch.allclose(module.eval().denoiser(x, 2.0, cond), plain.eval().denoiser(x, 2.0, cond), atol=1e-5)
