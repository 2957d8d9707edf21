"""A stopped or killed study leaves no command running, and loses no timings: the commands `reproduce` starts run
in their own process group, end with it (SIGTERM, SIGINT, its own failure) and notice when it is killed outright
(SIGKILL, the parent-death signal); timings.json is appended to and a damaged one kept aside; a weights sidecar
must name the experiment it is read for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lcsbench.cli import main as cli_main
from lcsbench.commands import reproduce  # noqa: F401 - registers the study's experiments
from lcsbench.study import runner
from lcsbench.study.scales import SCALES

# a study whose one command is a long sleep that writes its pid (processes.LCSBENCH: how a study starts a command)
PARENT = """
import sys
from pathlib import Path
from lcsbench.study import processes, runner
from lcsbench.study.scales import SCALES

processes.LCSBENCH = [sys.executable, "-c", "import os, sys, time\\nopen(sys.argv[1], 'w').write(str(os.getpid()))\\n"
                      "time.sleep(300)"]
study = runner.Study(SCALES["smoke"], Path(sys.argv[1]), Path(sys.argv[1]), None, ["exp1"], None, False)
with processes.commands_end_with_the_study(study.running):
    study.run([sys.argv[2]], "a long command")
"""


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie left for init to reap has stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stopped_or_killed_study_leaves_no_command_running(stop, tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "out"), str(pid_file)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    child = None
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            assert parent.poll() is None, parent.stdout.read()
            time.sleep(0.2)
        child = int(pid_file.read_text())
        assert alive(child) and os.getpgid(child) == child  # its own process group: a signal to ours misses it
        parent.send_signal(stop)
        output, _ = parent.communicate(timeout=60)
        deadline = time.monotonic() + 30
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(child), f"the command (pid {child}) outlived reproduce stopped by {stop.name}"
        if stop != signal.SIGKILL:  # stopped, not killed: it said so, naming the command it ended
            assert parent.returncode == 1
            assert f"reproduce: stopped by {stop.name}; ended its running command(s) (pid {child})" in output
    finally:
        parent.kill()
        parent.wait()
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)


def test_timings_are_appended_and_a_damaged_file_is_kept_aside(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    study = runner.Study(SCALES["smoke"], out, tmp_path / "runs", None, ["exp1"], None, False)
    study.timing("fit exp1", 3600.0)
    study.timing("fit exp2", 1800.0)
    study.timing("lengthgen exp1", 60.0)
    path = out / "timings.json"
    assert set(json.loads(path.read_text())) == {"fit exp1", "fit exp2", "lengthgen exp1"}  # appended
    text = path.read_text()
    path.write_text(text[:len(text) * 2 // 3])  # cut short: the last entry is lost, the first two are whole
    assert set(runner.read_timings(path)) == {"fit exp1", "fit exp2"}  # the report reads what is recoverable
    assert "2 whole timing entries recovered" in capsys.readouterr().out and path.exists()
    study.timing("locality exp1", 30.0)  # the next command keeps them, and the damaged file beside
    assert set(json.loads(path.read_text())) == {"fit exp1", "fit exp2", "locality exp1"}
    said = capsys.readouterr().out
    damaged = list(out.glob("timings.json.damaged-*"))
    assert len(damaged) == 1 and damaged[0].read_text() == text[:len(text) * 2 // 3]
    assert "any other entry is lost" in said and f"kept as {damaged[0]}" in said


def test_weights_whose_sidecar_names_another_experiment_are_refused(tmp_path):
    from lcsbench.data.shards import file_sha256

    out = tmp_path / "out"
    weights = out / "weights"
    weights.mkdir(parents=True)
    (weights / "exp2.pt").write_bytes(b"exp3's weights, copied over exp2's")
    sidecar = {"experiment": "exp3", "exported": "2024-01-01T00:00:00", "step": 20,
               "sha256": file_sha256(weights / "exp2.pt")}  # the copied sidecar carries the copied file's hash
    (weights / "exp2.json").write_text(json.dumps(sidecar))
    argv = ["reproduce", "--scale", "smoke", "--out", str(out), "--runs", str(tmp_path / "runs"),
            "--experiments", "exp2"]
    with pytest.raises(SystemExit, match="exp2.json names experiment exp3, not exp2: these are another experiment's"):
        cli_main([*argv, "--stage", "evaluate"])
    with pytest.raises(SystemExit, match="no trained run at"):  # export would redo it from the run: there is none
        cli_main([*argv, "--stage", "export"])


def study_processes(marker: str) -> list[int]:
    """The pids of running processes (not zombies) whose command line names `marker` (a test's own folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in command and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.mark.timeout(300)
def test_a_study_killed_mid_fit_leaves_nothing_running_and_resumes_from_its_checkpoint(clevr_shards, tmp_path):
    """SIGKILL to `reproduce` while its fit trains (after the fit's first checkpoint, step 10 of the smoke scale's
    20): the fit notices (parent-death signal) and stops, no lcsbench process of the study remains, and the same
    command started again resumes the fit from step 10, not from 0."""
    from lcsbench.checkpoints import checkpoint_step

    argv = [sys.executable, "-m", "lcsbench", "reproduce", "--scale", "smoke", "--out", str(tmp_path / "out"),
            "--runs", str(tmp_path / "runs"), "--data", str(clevr_shards), "--stage", "fit", "--experiments", "exp1"]
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    last = tmp_path / "runs" / "exp1" / "lightning_logs" / "run" / "checkpoints" / "last.ckpt"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and first.poll() is None:
            try:
                if last.exists() and checkpoint_step(last) == 10:  # whole: it loads
                    break
            except Exception:  # noqa: BLE001 - being written: look again
                pass
            time.sleep(0.05)
        assert first.poll() is None, f"reproduce ended before it was killed:\n{(tmp_path / 'first.log').read_text()}"
        assert last.exists(), f"no checkpoint in 180 s:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
        first.kill()  # SIGKILL: no handler runs, only the parent-death signal reaches the fit
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    deadline = time.monotonic() + 60
    while study_processes(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = study_processes(str(tmp_path))
    assert not left, f"left running after reproduce was killed: {left}"
    assert checkpoint_step(last) == 10  # the killed fit stopped before its next checkpoint

    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-4000:]
    assert "fit exp1: resuming from step 10 of 20" in output
    assert f"Restoring states from the checkpoint path at {last}" in output, output[-4000:]
    assert checkpoint_step(last) == 20
    print("\n".join(line for line in output.splitlines() if "resuming" in line or "Restoring states" in line))
