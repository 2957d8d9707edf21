"""`reproduce --slurm` without a cluster: the jobs it would submit (--dry-run: their order and afterok dependencies),
and the refusals (no sbatch, cluster flags without --slurm). tests/test_cluster.py runs the smoke study through a
real two-node SLURM cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lcsbench.cli import main as cli_main
from tests.test_reproduce import fake_checkpoint, fake_render, study_argv


def sbatch_lines(text: str) -> dict[str, str]:
    """part -> its `sbatch ...` line, from a dry run's output."""
    lines = [line for line in text.splitlines() if line.startswith("sbatch ")]
    return {line.split("--slurm-job ")[1].split(" --experiments")[0].strip("'"): line for line in lines}


def test_the_dry_run_lists_one_job_per_part_each_after_what_it_needs(tmp_path, capsys):
    assert cli_main(study_argv(tmp_path, "--slurm", "--dry-run", "--partition", "gpu", "--time", "4:00:00",
                               "--gpus-per-node", "1", "--sbatch-args", "--account proj --qos 'low prio'")) == 0
    jobs = sbatch_lines(capsys.readouterr().out)
    assert list(jobs) == ["render", "fit exp1", "fit exp2", "fit exp3", "spec cf_local_single",
                          "spec cf_empirical_all", "evaluate exp1", "evaluate exp2", "evaluate exp3",
                          "evaluate cf_local_single", "evaluate cf_empirical_all", "report"]
    assert "--dependency" not in jobs["render"] and "'--dependency=afterok:<render>' " in jobs["fit exp2"]
    assert "'--dependency=afterok:<fit exp3>:<spec cf_local_single>:<spec cf_empirical_all>'" in jobs["evaluate exp3"]
    assert "--stage fit,export" in jobs["fit exp1"] and "--experiments exp1" in jobs["fit exp1"]
    assert "--stage evaluate" in jobs["evaluate cf_local_single"]
    assert jobs["report"].count("<") == 11  # afterok on every other part
    for line in jobs.values():
        assert line.startswith("sbatch --ntasks 1 --cpus-per-task 1 --time 4:00:00 --partition gpu "
                               "--gpus-per-node=1 --account proj --qos 'low prio' ")
        assert "scripts/slurm_command.sh python -m lcsbench reproduce --scale smoke" in line


def test_done_parts_are_not_submitted_again(tmp_path, capsys):
    fake_render(tmp_path / "data")  # the render is complete: its part and its wait are left out
    fake_checkpoint(tmp_path / "runs" / "exp1" / "lightning_logs" / "run" / "checkpoints" / "last.ckpt", 20)
    assert cli_main(study_argv(tmp_path, "--slurm", "--dry-run", "--experiments", "exp1")) == 0
    printed = capsys.readouterr().out
    jobs = sbatch_lines(printed)
    assert "render: done (the study's outputs are current), not submitted" in printed
    # exp1 trained to max_steps but not exported: its part runs (the fit stage skips, the export runs)
    assert list(jobs) == ["fit exp1", "evaluate exp1", "report"] and "--dependency" not in jobs["fit exp1"]
    assert "--experiments exp1" in jobs["report"]  # the report of the chosen experiments


def test_slurm_flags_are_refused_without_slurm_and_without_sbatch(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--partition, --no-wait set\\(s\\) how SLURM runs the study's jobs: add "
                                         "--slurm|--no-wait, --partition set"):
        cli_main(study_argv(tmp_path, "--partition", "gpu", "--no-wait"))
    with pytest.raises(SystemExit, match="with --slurm every command is its own job: leave --parallel out"):
        cli_main(study_argv(tmp_path, "--slurm", "--parallel", "2"))
    with pytest.raises(SystemExit, match="--sbatch-args .* is not a shell-quoted list"):
        cli_main(study_argv(tmp_path, "--slurm", "--sbatch-args", "--comment 'open"))
    with pytest.raises(SystemExit):
        cli_main(study_argv(tmp_path, "--stage", "fit,train"))
    assert "argument --stage: takes all, one of render, fit, export, evaluate, report or a comma list of them; got " \
           "'fit,train'" in capsys.readouterr().err
    bare = tmp_path / "bin"  # a PATH without SLURM's clients
    bare.mkdir()
    if shutil.which("sbatch", path=str(bare)) is None:
        done = subprocess.run([sys.executable, "-m", "lcsbench", *study_argv(tmp_path, "--slurm")], capture_output=True,
                              text=True, env={**os.environ, "PATH": str(bare)}, cwd=Path(__file__).parents[1])
        assert done.returncode != 0
        assert done.stderr.strip().splitlines()[-1].startswith(
            "reproduce: --slurm submits the study with sbatch, which is not installed here")
