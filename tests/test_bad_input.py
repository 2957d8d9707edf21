"""Bad input is refused before any compute, with what was expected (issue 17, items 8-10; issue 25, items 10,
14, 15)."""

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


# --- issue 25: options checked before work, one line from a terminal ------------------------------------------------


def write_manifest_only(root, resolution: int = 32):
    """A dataset folder holding only its manifest (enough for the checks that come before any shard is read)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"settings": {"resolution": resolution}, "shards": {},
                                                    "shard_samples": {}}))
    return root


@pytest.mark.parametrize("flags, message", [
    (["--grid-size", "0"], "need --grid-size >= 1"),
    (["--batch-size", "0"], "--batch-size >= 1"),
    (["--tolerance-cells", "-1"], "--tolerance-cells: the matching tolerance is a positive number"),
    (["--tolerance-cells", "nan"], "--tolerance-cells: the matching tolerance is a positive number"),
    (["--grid-size", "7"], "grid_size 7 does not divide the image size 32x32"),
    (["--counts", "abc"], "invalid object counts 'abc'"),
])
def test_eval_judge_options_are_checked_before_judging(flags, message, tmp_path):
    data = write_manifest_only(tmp_path / "data")
    with pytest.raises(SystemExit, match=message):
        cli_main(["eval-judge", "--data", str(data), *flags])


@pytest.mark.parametrize("flags, message", [
    (["--chunk-size", "0"], "--chunk-size is the number of cotangents per batched backward, >= 1"),
    (["--memory-budget-gib", "nan"], "--memory-budget-gib is the memory one batched backward may use"),
    (["--memory-budget-gib", "-1"], "--memory-budget-gib is the memory one batched backward may use"),
    (["--targets", "²,3"], "--targets takes pixels as ROW,COL"),
])
def test_locality_budget_options_are_checked_first(flags, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        cli_main(["locality", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path), *flags])


def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    missing_ckpt = str(tmp_path / "none.ckpt")  # were the output checked late, this would be the error
    with pytest.raises(SystemExit, match=r"--out .*a-file/grid.png: .*a-file is a file, so nothing can be written"):
        cli_main(["sample", "--ckpt", missing_ckpt, "--locations", "paper:2", "--out", str(blocker / "grid.png")])
    (tmp_path / "grid.png").mkdir()
    with pytest.raises(SystemExit, match=r"--out .*grid.png is a folder; --out is the file to write"):
        cli_main(["sample", "--ckpt", missing_ckpt, "--locations", "paper:2", "--out", str(tmp_path / "grid.png")])
    with pytest.raises(SystemExit, match="a-file is a file; --out is the folder the outputs go into"):
        cli_main(["locality", "--ckpt", missing_ckpt, "--out", str(blocker)])
    with pytest.raises(SystemExit, match="a-file is a file; --out is the folder"):
        cli_main(["oracle-check", "--judge", missing_ckpt, "--out", str(blocker)])
    assert cli_main(["render", "--out", str(blocker)]) == 1
    assert "a-file is a file; --out is the folder the outputs go into" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_before_loading(tmp_path):
    with pytest.raises(SystemExit, match="--device cuda: torch sees no CUDA GPU here.*pass --device cpu"):
        cli_main(["sample", "--ckpt", str(tmp_path / "none.ckpt"), "--locations", "paper:2", "--device", "cuda",
                  "--out", str(tmp_path / "g.png")])
    with pytest.raises(SystemExit, match="--device cuda: torch sees no CUDA GPU here"):
        cli_main(["locality", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path), "--device", "cuda"])


def test_oracle_check_refuses_bad_counts_and_a_missing_judge_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match="need --samples-per-k >= 1"):
        cli_main(["oracle-check", "--judge", "x.ckpt", "--out", str(tmp_path), "--samples-per-k", "0"])
    with pytest.raises(SystemExit, match=r"oracle-check: .*none.ckpt does not exist"):
        cli_main(["oracle-check", "--judge", str(tmp_path / "none.ckpt"), "--out", str(tmp_path)])


def test_a_terminal_gets_one_line_and_exit_2_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    from lcsbench.cli import run

    argv = ["eval-judge", "--data", str(tmp_path / "nowhere")]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "manifest.json does not exist" in err and err.startswith("eval-judge:")
    import torch

    assert torch.is_grad_enabled()  # a refused command leaves the process's autograd as it found it
    argv = ["lengthgen", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path), "--trained-counts", "abc"]
    assert run(argv) == 2  # a SystemExit from a command I do not own, as one line
    with pytest.raises(SystemExit):
        run([*argv, "--debug"])  # the exception itself, with its traceback
    monkeypatch.setenv("LCSBENCH_DEBUG", "1")
    with pytest.raises(SystemExit):
        run(argv)


def snapshot(path, step: int, run_id: str | None, width: int = 2):
    import torch

    from lcsbench.checkpoints import ARCH_KEY, SNAPSHOT_KIND
    from lcsbench.diffusion.phema import sigma_rel_to_gamma

    record = {"net_class": "lcsbench.nn.edm2.Precond", "net_config": {"model_channels": width},
              "module_class": "lcsbench.models.edm2.EDM2Diffusion", "module_hparams": {}}
    torch.save({"kind": SNAPSHOT_KIND, "step": step, "sigma_rel": 0.05, "gamma": sigma_rel_to_gamma(0.05),
                "run_id": run_id, "net_state": {"w": torch.full((2,), float(step))}, ARCH_KEY: record},
               path / f"phema-{step:08d}-0.050.pt")


def test_reconstruct_ema_refuses_snapshots_of_two_runs(tmp_path):
    snapshots = tmp_path / "phema"
    snapshots.mkdir()
    for step in (2, 4):
        snapshot(snapshots, step, "run-a")
    snapshot(snapshots, 6, "run-b")  # copied over from another run, as the old warning advised
    out = tmp_path / "ema.pt"
    with pytest.raises(SystemExit, match=r"mixes snapshots of more than one training run \(run run-a: 2 snapshots, "
                                         r"steps 2..4, .*; run run-b: 1 snapshots, steps 6..6"):
        cli_main(["reconstruct-ema", "--snapshots", str(snapshots), "--sigma-rel", "0.08", "--out", str(out)])
    assert not out.exists()
    (snapshots / "phema-00000006-0.050.pt").unlink()
    assert cli_main(["reconstruct-ema", "--snapshots", str(snapshots), "--sigma-rel", "0.08", "--out", str(out)]) == 0
    assert out.is_file()


def test_reconstruct_ema_refuses_snapshots_of_two_networks_without_run_ids(tmp_path):
    legacy = tmp_path / "phema"  # snapshots written before run ids: the networks must agree
    legacy.mkdir()
    snapshot(legacy, 2, None)
    snapshot(legacy, 4, None, width=4)
    with pytest.raises(SystemExit, match=r"mixes snapshots of more than one training run \(2 different networks"):
        cli_main(["reconstruct-ema", "--snapshots", str(legacy), "--sigma-rel", "0.08", "--out",
                  str(tmp_path / "ema.pt")])


def test_lengthgen_and_reproduce_refuse_an_out_that_is_a_file_before_any_work(tmp_path):
    from lcsbench.cli import main as cli_main

    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    with pytest.raises(SystemExit, match="--out .*a-file is a file"):
        cli_main(["lengthgen", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(taken), "--device", "cpu"])
    with pytest.raises(SystemExit, match="--runs .*a-file is a file"):
        cli_main(["reproduce", "--scale", "smoke", "--out", str(tmp_path / "out"), "--runs", str(taken)])
