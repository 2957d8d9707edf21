"""scripts/gpu_check.py --device cpu --quick: every stage of the first-GPU check runs at tiny sizes and reports
(issue 24). In subprocesses with a hard timeout that kills the whole group (the ddp stage starts two ranks)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import run_killing_on_timeout

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
MUST_REPORT = ("train", "fit", "ddp", "patch", "jacobian")


def run_check(out: Path, *flags: str, timeout: float = 1500) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out), *flags]
    result = run_killing_on_timeout(command, env, timeout, "gpu_check")
    assert result.returncode == 0, result.stdout[-3000:]
    return json.loads((out / "gpu_check.json").read_text())


@pytest.mark.slow  # seven stages, each a fresh Python process, one of them a 2-rank DDP fit
def test_quick_check_reports_every_stage(tmp_path):
    # --time-scale: the stages' limits are set for a quiet machine; the test machine is shared
    report = run_check(tmp_path, "--time-scale", "8")
    for stage in MUST_REPORT:
        assert report[stage]["status"] == "ok", (stage, report[stage])
    train = report["train"]["variants"]
    assert train["eager"]["images_per_s"] > 0 and train["channels_last"]["images_per_s"] > 0
    assert "skipped" in train["compiled"]  # measured on a GPU only, with the reason recorded
    for experiment in ("exp1", "exp3"):
        fit = report["fit"]["experiments"][experiment]
        assert fit["global_batch"] == 8 and fit["accumulation"] == 2 and fit["optimizer_steps"] == 4
        assert fit["steps_per_s"] > 0 and fit["loader_wait_ms_per_batch"] >= 0 and "overhead_vs_bare" in fit
    ddp = report["ddp"]
    assert ddp["world_size"] == 2 and ddp["steps"] == [3, 3] and ddp["global_batch"] == 16
    assert ddp["params_equal"] and ddp["ema_equal"] and ddp["keys_differ"]  # DDP ranks agree, data differs
    assert report["patch"]["max_abs_difference"] < 1e-4 and report["patch"]["speedup"] > 0
    assert report["jacobian"]["max_relative_difference"] < 1e-3
    assert report["run32"]["status"] == "ok" and report["run32"]["steps"] == 6
    assert set(report["run32"]["final_gap"]) == {"0.5", "2.0", "5.0"}
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {stage} | ok |" in table for stage in MUST_REPORT)


@pytest.mark.slow
def test_a_stage_past_its_limit_is_cut_off_and_still_reported(tmp_path):
    # the ddp stage starts two ranks of a fit: far more than 8 s anywhere; patch then finds the budget spent
    report = run_check(tmp_path, "--only", "ddp,patch", "--budget", "8", "--time-scale", "1")
    assert report["ddp"]["status"] == "cut off at its limit of 8 s" and report["ddp"]["reason"].startswith("cut off")
    assert report["patch"]["status"] == "skipped" and "budget" in report["patch"]["reason"]
    assert not list(tmp_path.glob("ddp/rank*.json"))  # both ranks were killed with the stage's process group
