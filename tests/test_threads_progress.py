"""Threads from the usable cores and progress lines for logs (issue 27 items 1 and 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from lcsbench.callbacks.progress import ProgressLines, progress_line
from lcsbench.commands._common import Progress, cgroup_cpu_limit, heartbeat, thread_count, usable_cores

REPO = Path(__file__).resolve().parents[1]


def test_cgroup_quota_is_read_in_cores(tmp_path):
    v2, v2_unlimited, v1, v1_unlimited = (tmp_path / name for name in ("v2", "v2max", "v1", "v1none"))
    for folder in (v2, v2_unlimited, v1 / "cpu", v1_unlimited / "cpu"):
        folder.mkdir(parents=True)
    (v2 / "cpu.max").write_text("150000 100000\n")
    (v2_unlimited / "cpu.max").write_text("max 100000\n")
    for root, quota in ((v1, "250000"), (v1_unlimited, "-1")):
        (root / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v2) == 1.5 and cgroup_cpu_limit(v1) == 2.5
    assert cgroup_cpu_limit(v2_unlimited) is None and cgroup_cpu_limit(v1_unlimited) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_usable_cores_follow_the_cpu_affinity():
    """A process pinned to one core counts one core and, unless told otherwise, chooses one thread."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from lcsbench.commands._common import usable_cores, thread_count; print(usable_cores(), *thread_count())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:3] == ["1", "1", "1"]


def test_thread_overrides_win(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert thread_count() == (1, "OMP_NUM_THREADS")
    assert thread_count(requested=1) == (1, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    with pytest.raises(SystemExit, match="OMP_NUM_THREADS"):
        thread_count()
    monkeypatch.delenv("OMP_NUM_THREADS")
    threads, why = thread_count(processes=2)  # ranks split the cores, never below one thread
    assert threads == max(1, usable_cores() // 2) and "for 2 processes" in why


def test_progress_lines_have_rate_and_eta():
    progress = Progress("sample", 64)
    time.sleep(0.05)
    line = progress.line(16)
    assert line.startswith("sample: 16/64 images, ") and "images/s" in line and "ETA 0:00:0" in line
    assert progress_line(30, 600, 2.0, 15.0, {"loss": 0.5}) == \
        "step 30/600 (5%), 2 steps/s, ETA 0:04:45, elapsed 0:00:15, loss 0.5"
    assert "s/step" in progress_line(3, None, 0.25, 12.0, {})


def test_heartbeat_prints_while_long_work_runs(capsys):
    with heartbeat("locality", "scene 1/1", every_seconds=0.05):
        time.sleep(0.3)
    beats = [line for line in capsys.readouterr().err.splitlines() if line.startswith("locality: scene 1/1, ")]
    assert beats and all(line.endswith("so far") for line in beats)


def test_progress_lines_report_a_real_fit(tmp_path, capsys):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=6, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=2,
                        val_check_interval=3, default_root_dir=tmp_path,
                        callbacks=[ProgressLines(every_seconds=1e-6)])
    trainer.fit(BoringModel())
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.startswith("lcsbench fit: step")]
    assert lines[0].startswith("lcsbench fit: step 1/6 (17%), ") and lines[-1].startswith("lcsbench fit: step 6/6")
    assert len(lines) == 6 and all("ETA" in line and ("steps/s" in line or "s/step" in line) for line in lines)
    validations = [line for line in out if line.startswith("lcsbench fit: validation at step")]
    assert [line.split(" took ")[0] for line in validations] == ["lcsbench fit: validation at step 3",
                                                                  "lcsbench fit: validation at step 6"]


def test_sample_grids_are_enlarged_and_outline_the_requested_cells():
    """A 32 px tile becomes 96 px by whole blocks; the conditioned cell (row 4, col 10 of 16) gets a lime border
    of 6 x 6 px at 96 px, and nothing outside it changes."""
    import torch

    from lcsbench.analysis.plots import image_grid, outline_cells, upscale

    images = torch.linspace(-1, 1, 2 * 3 * 32 * 32).view(2, 3, 32, 32)
    big = upscale(images)
    assert big.shape == (2, 3, 96, 96) and torch.equal(big[:, :, ::3, ::3], images)
    grid = torch.zeros(1, 16, 16, dtype=torch.long)
    grid[0, 4, 10] = 1
    marked = outline_cells(big, grid)
    changed = (marked != big).any(dim=1)
    rows, cols = changed.nonzero()[:, 1], changed.nonzero()[:, 2]
    assert rows.min() == 24 and rows.max() == 29 and cols.min() == 60 and cols.max() == 65  # the cell: 6 px at 96
    assert torch.equal(marked[0, :, 24, 60], torch.tensor([-1.0, 1.0, -1.0]))  # lime border
    assert torch.equal(marked[:, :, 26:28, 62:64], big[:, :, 26:28, 62:64])  # inside the border: the image
    assert image_grid(marked).shape == (98, 195, 3)  # one row of two 96 px tiles, 1 px gaps


def test_analysis_callbacks_say_once_that_they_need_tensorboard(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from lcsbench.callbacks.base import EveryNSteps

    class Counting(EveryNSteps):
        calls = 0

        def analyse(self, trainer, pl_module, batch, writer):
            Counting.calls += 1

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, logger=CSVLogger(tmp_path),
                        enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[Counting(every_n_steps=1)])
    with pytest.warns(UserWarning, match=r"Counting logs to TensorBoard only .*CSVLogger.*will do nothing") as caught:
        trainer.fit(BoringModel())
    assert sum("TensorBoard only" in str(w.message) for w in caught) == 1 and Counting.calls == 0


def test_the_terminal_bar_names_steps_out_of_the_total(tmp_path):
    """The stock Rich bar labels a max_steps fit "Epoch 1/-2"; this one names the epoch's steps out of the total."""
    from lcsbench.callbacks.progress import StepsRichProgressBar

    bar, labels = StepsRichProgressBar(), []

    class Labels(L.Callback):  # the label each epoch's bar gets, made when the epoch starts
        def on_train_epoch_start(self, trainer, pl_module):
            labels.append(bar._get_train_description(trainer.current_epoch))

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=100, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
                        callbacks=[bar, Labels()])
    trainer.fit(BoringModel())  # 64 batches per epoch
    assert labels == ["Epoch 0 (steps 0-64 of 100)", "Epoch 1 (steps 64-100 of 100)"]


def test_a_redirected_cli_fit_prints_its_threads_and_progress_lines(clevr_shards, tmp_path, monkeypatch, capsys):
    """`lcsbench fit > log`: the thread choice once, then progress lines with total, rate and ETA (pytest's captured
    stdout is not a terminal, as a log file is not), and no empty hp_metric in TensorBoard."""
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lcsbench.cli import main as lcsbench
    from tests.test_edm2_training import micro_config

    monkeypatch.chdir(tmp_path)
    bar = tmp_path / "bar.yaml"
    bar.write_text("trainer:\n  enable_progress_bar: true\n")
    before = torch.get_num_threads()
    try:
        assert lcsbench(["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--config",
                         str(micro_config(tmp_path, clevr_shards)), "--config", str(bar), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out.splitlines()
    assert out.count("lcsbench: --threads -> torch threads 1, data loaded in the main process; override with "
                     "OMP_NUM_THREADS or --threads") == 1
    steps = [line for line in out if line.startswith("lcsbench fit: step ")]
    assert steps[0].startswith("lcsbench fit: step 1/4 (25%), ") and steps[-1].startswith("lcsbench fit: step 4/4 ")
    assert all("ETA" in line for line in steps)
    events = EventAccumulator(str(tmp_path / "runs" / "quickstart" / "lightning_logs" / "version_0"))
    events.Reload()
    assert "val/loss" in events.Tags()["scalars"] and "hp_metric" not in events.Tags()["scalars"]


def test_every_diffusion_config_logs_the_learning_rate_through_lightning():
    """train/lr comes from LearningRateMonitor (the schedule is named train/lr in EDM2Diffusion), not a hand-written
    self.log; the judges have no schedule."""
    import yaml

    import lcsbench.study.experiments  # noqa: F401 - registers the study's experiments
    from lcsbench.study.records import REGISTRY
    from lcsbench.study.scales import config_paths, read_config

    whole = [p for p in (REPO / "configs").rglob("*.yaml") if not p.name.startswith("judge")
             and "models" not in p.relative_to(REPO / "configs").parts and "reproduce" not in p.parts]
    stacks = [[REPO / p for p in config_paths(record, scale)] for record in REGISTRY.values() if record.trained
              for scale in record.configs if scale != "paper"]  # a study experiment: its base + delta stack
    assert len(whole) >= 11 and len(stacks) >= 19
    for path, callbacks in [*((p, yaml.safe_load(p.read_text())["trainer"]["callbacks"]) for p in whole),
                            *((s[-1], read_config(s)["config"]["trainer"]["callbacks"]) for s in stacks)]:
        monitors = [c for c in callbacks if c["class_path"] == "lightning.pytorch.callbacks.LearningRateMonitor"]
        assert monitors == [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                             "init_args": {"logging_interval": "step"}}], path
