"""`python -m lcsbench lengthgen` end to end on tiny sizes: a real EDM2 model and judge fitted on the render,
the Blender oracle row, outputs and bad input; and the protocol on Blender renders of the requested layouts."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch

from lcsbench.analysis import lengthgen as lg
from lcsbench.cli import main as cli_main
from lcsbench.data.datamodule import CLEVRDataModule
from lcsbench.models.judge import JudgeModule
from lcsbench.nn.judge import CentreHeatmapNet


def fit_and_save(module, data, path, steps):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=str(path.parent))
    trainer.fit(module, data)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def fitted(clevr_shards, tmp_path_factory):
    """(model checkpoint, judge checkpoint): a tiny location EDM2 and a tiny judge, each fitted a few steps."""
    from lcsbench.callbacks.ema import PowerFunctionEMA
    from lcsbench.models.edm2 import EDM2Diffusion
    from lcsbench.nn.edm2 import preset

    root = tmp_path_factory.mktemp("lengthgen_run")
    torch.manual_seed(0)

    def data():
        return CLEVRDataModule(str(clevr_shards), counts="1-3", batch_size=4, num_workers=0, steps_per_epoch=3,
                               shuffle_buffer=8, resolution=32)

    model = EDM2Diffusion(net=preset("tiny", label_dim=256), conditioning="location", lr=0.01, lr_rampup_images=1)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=str(root),
                        callbacks=[PowerFunctionEMA(sigma_rels=[0.05], snapshot_every_n_steps=1000)])
    trainer.fit(model, data())
    model_ckpt = root / "model.ckpt"
    trainer.save_checkpoint(model_ckpt)
    judge_ckpt = fit_and_save(JudgeModule(CentreHeatmapNet(channels=8, levels=2), lr=5e-3), data(),
                              root / "judge.ckpt", steps=3)
    return model_ckpt, judge_ckpt


def test_lengthgen_command_writes_rows_figures_and_table(fitted, tmp_path, capsys):
    model_ckpt, judge_ckpt = fitted
    out = tmp_path / "report"
    assert cli_main(["lengthgen", "--ckpt", str(model_ckpt), "--judge", str(judge_ckpt), "--samples-per-k", "2",
                     "--ks", "1-3", "--steps", "2", "--oracle-samples", "4", "--out", str(out), "--name", "tiny"]) == 0
    report = json.loads((out / "lengthgen.json").read_text())
    assert report["protocol"]["trained_counts"] == [1, 2, 3] and report["protocol"]["label_mode"] == "all"
    from lcsbench.data.shards import file_sha256  # the judge named by its file and content, not a machine's path
    assert report["protocol"]["judge"] == "judge.ckpt"
    assert report["protocol"]["judge_sha256"] == file_sha256(judge_ckpt)
    assert set(report["rows"]) == {"model", "oracle"}
    for row in report["rows"].values():
        assert sorted(row["per_k"]) == ["1", "2", "3"]
        assert all(r["samples"] == 2 and sum(r["count_histogram"].values()) == 2 for r in row["per_k"].values())
        # k_max is the paper's rule applied to the row's own per-k rates (> 25%, > 50% strict, from k = 1 up)
        rates = [row["per_k"][str(k)]["successes"] / 2 for k in (1, 2, 3)]
        assert [row["per_k"][str(k)]["success_rate"] for k in (1, 2, 3)] == rates
        expected = [next((k for k, r in enumerate(rates) if r <= t), 3) for t in (0.25, 0.5)]
        assert (row["k_max"], row["k_max_strict"]) == tuple(expected)
    for name in ("lengthgen.png", "samples_k1.png", "samples_k3.png", "oracle_k2.png", "table.md"):
        assert (out / name).stat().st_size > 0
    assert (out / "table.md").read_text().splitlines()[2].startswith("| tiny | ")
    assert "k_max" in capsys.readouterr().out


def test_lengthgen_bad_input_is_a_clear_error(fitted, tmp_path):
    model_ckpt, judge_ckpt = fitted
    base = ["lengthgen", "--ckpt", str(model_ckpt), "--judge", str(judge_ckpt), "--out", str(tmp_path),
            "--samples-per-k", "1", "--no-oracle", "--steps", "2"]
    with pytest.raises(SystemExit, match="the color protocol was asked for but .* is a location-conditioned model"):
        cli_main([*base, "--conditioning", "color"])
    with pytest.raises(SystemExit, match="k in 1..12"):
        cli_main([*base, "--ks", "12-13"])
    other = JudgeModule(CentreHeatmapNet(channels=8, levels=2), resolution=64)
    other_path = tmp_path / "judge64.ckpt"
    torch.save({"state_dict": other.state_dict(),
                "lcsbench_judge": {"net_config": other.net.config, "hparams": dict(other.hparams)}}, other_path)
    with pytest.raises(SystemExit, match="trained on 64x64 images but the model draws 32x32"):
        cli_main([*base[:4], str(other_path), *base[5:]])
    with pytest.raises(SystemExit, match="not a judge checkpoint"):
        cli_main([*base[:4], str(model_ckpt), *base[5:]])


def test_oracle_renders_of_requested_layouts_pass_the_protocol(tmp_path):
    """The oracle check without a learned judge: the renderer's own centres of Blender renders of the requested
    layouts succeed at every k (k_max = 12); a one-object generator gives k_max = 1."""
    from lcsbench.data.render import render_layouts

    requests = lg.protocol_requests("location", range(1, 13), 1)
    render_layouts(tmp_path, [lg.oracle_scene(r, 64) for r in requests], resolution=64, samples=4, progress=False)
    scenes = []
    for shard in sorted((tmp_path / "layout").glob("eval-*.tar")):
        import tarfile

        with tarfile.open(shard) as tar:
            scenes += [(m.name, json.loads(tar.extractfile(m).read())) for m in tar if m.name.endswith(".json")]
    scenes = [scene for _, scene in sorted(scenes)]
    rule = lg.SuccessRule("location", (1, 2, 3), "all")
    truth, one = lg.LengthGenTally(), lg.LengthGenTally()
    for request, scene in zip(requests, scenes):
        centres = torch.tensor([o["pixel_coords"][:2] for o in scene["objects"]])
        truth.add(request["k"], lg.judge_request(request, {"centres": centres}, 64, 16), rule)
        one.add(request["k"], lg.judge_request(request, {"centres": centres[:1]}, 64, 16), rule)
    assert truth.summarize()["k_max"] == 12
    assert one.summarize()["k_max"] == 1


def test_lengthgen_curve_callback_logs_to_tensorboard(fitted, clevr_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lcsbench.callbacks.ema import PowerFunctionEMA
    from lcsbench.callbacks.lengthgen import LengthGenCurve
    from lcsbench.models.edm2 import EDM2Diffusion
    from lcsbench.nn.edm2 import preset

    _, judge_ckpt = fitted
    curve = LengthGenCurve(str(judge_ckpt), every_n_steps=2, ks=[1, 2], samples_per_k=1, num_steps=2)
    module = EDM2Diffusion(net=preset("tiny", label_dim=256), conditioning="location", lr=0.01, lr_rampup_images=1)
    data = CLEVRDataModule(str(clevr_shards), counts="1-3", batch_size=4, num_workers=0, steps_per_epoch=2,
                           shuffle_buffer=8, resolution=32)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="run", version=0)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[PowerFunctionEMA(sigma_rels=[0.05]), curve])
    trainer.fit(module, data)
    assert curve.rule.trained_counts == (1, 2, 3) and curve.rule.label_mode == "all"
    assert sorted(curve.last_report["rows"]["model"]["per_k"]) == ["1", "2"]
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert {"lengthgen/success@k=1", "lengthgen/success@k=2", "lengthgen/k_max"} <= set(events.Tags()["scalars"])
    assert "lengthgen/curve" in events.Tags()["images"]
    with pytest.raises(ValueError, match="every_n_steps >= 1"):
        LengthGenCurve(str(judge_ckpt), every_n_steps=0)


def test_lengthgen_into_an_out_with_other_settings_fails_before_sampling(fitted, tmp_path, capsys):
    """issue 17 item 6: it sampled everything, then died with a traceback in the oracle render."""
    model_ckpt, judge_ckpt = fitted
    base = ["lengthgen", "--ckpt", str(model_ckpt), "--judge", str(judge_ckpt), "--out", str(tmp_path),
            "--samples-per-k", "1", "--steps", "2", "--oracle-samples", "4"]
    assert cli_main([*base, "--ks", "1"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit, match="lengthgen: the oracle row: .* holds a dataset rendered with other settings"):
        cli_main([*base, "--ks", "1-2"])
    assert "lengthgen sampling:" not in capsys.readouterr().err  # nothing was computed and thrown away


def test_lengthgen_rerun_judges_the_saved_samples_without_sampling(fitted, tmp_path, capsys):
    model_ckpt, judge_ckpt = fitted
    base = ["lengthgen", "--ckpt", str(model_ckpt), "--judge", str(judge_ckpt), "--out", str(tmp_path),
            "--samples-per-k", "2", "--ks", "1-2", "--steps", "2", "--no-oracle"]
    assert cli_main(base) == 0
    assert "lengthgen sampling: 4/4 images" in capsys.readouterr().err
    with np.load(tmp_path / "samples.npz") as saved_file:
        settings = json.loads(str(saved_file["settings"]))
    assert settings["steps"] == 2 and settings["ks"] == [1, 2] and len(settings["ckpt_sha256"]) == 64
    saved = lg.load_samples(tmp_path / "samples.npz", settings)
    assert saved.shape == (4, 32, 32, 3) and saved.dtype.name == "uint8"
    # another tolerance: the same samples judged again, nothing sampled
    assert cli_main([*base, "--tolerance-cells", "3"]) == 0
    err = capsys.readouterr().err
    assert "lengthgen sampling:" not in err and "judging the 4 samples saved in" in err
    report = json.loads((tmp_path / "lengthgen.json").read_text())
    assert report["protocol"]["tolerance_cells"] == 3.0
    # other sampling settings draw new samples and replace the saved ones
    assert cli_main([*base[:-3], "--steps", "3", "--no-oracle"]) == 0
    assert "lengthgen sampling: 4/4 images" in capsys.readouterr().err
    assert lg.load_samples(tmp_path / "samples.npz", {"steps": 2}) is None
    (tmp_path / "samples.npz").write_bytes(b"truncated")  # an unreadable file is sampled again, not a crash
    assert cli_main(base) == 0
    assert "lengthgen sampling: 4/4 images" in capsys.readouterr().err
