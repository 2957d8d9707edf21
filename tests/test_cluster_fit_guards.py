"""What a fit guards that matters most on clusters, in the default suite (one process, CPU): one writer per run
folder, a weights file is not a training checkpoint, a resumed run says what changed, and intervals given in batches
mean optimizer steps under gradient accumulation (issues 34 item 4, 36)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from lcsbench.cli import run as lcsbench_terminal
from tests.test_cluster import REPO, records, tiny_config

EXPORTED = REPO / "reports" / "reproduction" / "cpu" / "weights" / "exp1.pt"


def test_a_second_fit_into_the_same_run_folder_is_refused_naming_the_first(clevr_shards, tmp_path):
    config = tiny_config(tmp_path, clevr_shards, steps=400, seconds_per_step=0.5)
    command = [sys.executable, "-m", "lcsbench", "fit", "--config", str(config),
               "--trainer.logger.init_args.version", "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    lock = tmp_path / "runs" / "lightning_logs" / "run" / "fit.lock"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (lock.exists() and "pid" in lock.read_text()):
            assert first.poll() is None, "the first fit ended early"
            time.sleep(0.2)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    finally:
        os.killpg(first.pid, 9)
        first.wait()
    refusal = second.stderr.strip().splitlines()[-1]
    assert second.returncode == 2
    assert f"is being written by another fit (pid {first.pid} on" in refusal, second.stderr[-2000:]


def test_an_exported_weights_file_as_ckpt_path_is_named_and_leaves_no_run_folder(clevr_shards, tmp_path, capsys):
    config = tiny_config(tmp_path, clevr_shards, steps=2)
    assert lcsbench_terminal(["fit", "--config", str(config), "--ckpt_path", str(EXPORTED)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is a lcsbench-ema-export file (weights at step" in line and "pass the file as --ckpt to sample" in line
    assert not (tmp_path / "runs").exists()


def test_resuming_with_another_global_batch_says_so(clevr_shards, tmp_path, capsys):
    config = tiny_config(tmp_path, clevr_shards, steps=2)
    assert lcsbench_terminal(["fit", "--config", str(config)]) == 0
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    capsys.readouterr()
    assert lcsbench_terminal(["fit", "--config", str(config), "--trainer.max_steps", "4",
                              "--data.init_args.global_batch_size", "4",
                              "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    said = capsys.readouterr().err
    assert (f"resuming with data global_batch_size = 4; {run} was trained with 8 (config.yaml now records 4, "
            f"hparams.yaml keeps 8") in said


def test_intervals_count_optimizer_steps_under_accumulation(clevr_shards, tmp_path, caplog):
    """Global batch 32 of 4-image rounds on one CPU process: 8 rounds a step. `val_check_interval 1` validates
    after every optimizer step (not every batch), and the cost of the rounds is said before training."""
    config = tiny_config(tmp_path, clevr_shards, steps=2)
    assert lcsbench_terminal(["fit", "--config", str(config), "--data.init_args.global_batch_size", "32",
                              "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1"]) == 0
    said = caplog.text  # Lightning's rank-zero info lines go through logging
    assert "global batch 32 = 1 rank(s) x 4 images x 8 accumulation round(s)" in said
    assert "val_check_interval 1 counts optimizer steps: validation every 1 step(s) = 8 batches" in said
    assert "on CPU the global batch 32 takes 8 rounds of 4 image(s)" in said
    assert "--data.init_args.global_batch_size 4 (one round a step)" in said
    (record,) = records(tmp_path)
    assert record["global_step"] == 2 and record["accumulate"] == 8
    assert record["val_steps"] == [1, 2]


def test_fit_help_names_the_command_as_typed(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "lcsbench", "fit", "--help"], capture_output=True, text=True,
                               timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert help_text.startswith("usage: python -m lcsbench fit ")


def test_rank_zero_unreachable_is_one_line_without_a_cluster():
    """The check the SLURM job runs before the process group forms (lcsbench/slurm.py), on this machine: a name
    that does not resolve, an address rank 0 cannot serve on, a port nobody opens within the bounded wait."""
    from lcsbench.slurm import SlurmError, check_rank_zero

    with pytest.raises(SlurmError, match=r"rank 1: rank 0's address 'n1.invalid' \(MASTER_ADDR\) does not resolve"):
        check_rank_zero("n1.invalid", 29500, rank=1)
    with pytest.raises(SlurmError, match="MASTER_ADDR 192.0.2.1 .* is not an address of this machine"):
        check_rank_zero("192.0.2.1", 29500, rank=0)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connections are refused
        started = time.monotonic()
        with pytest.raises(SlurmError, match=f"rank 1 could not reach rank 0 at 127.0.0.1:{port} .* for 2 s"):
            check_rank_zero("127.0.0.1", port, rank=1, timeout_s=2)
        assert time.monotonic() - started < 10
    check_rank_zero("127.0.0.1", port, rank=0)  # rank 0 serves on a local address: nothing to say
