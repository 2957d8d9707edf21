"""SLURM from lcsbench's side: which job a process belongs to, where its preemption checkpoint lives, whether rank 0
can be reached, and submitting and waiting for jobs (for the study's runner and the tests marked `cluster`).

A fit under SLURM (`scripts/slurm_fit.sh`) keeps Lightning's preemption checkpoints (`hpc_ckpt_N.ckpt`, written on
SLURM's warning signal before the job is requeued) in `<run folder>/slurm-job-<id>/`, not in the folder the job was
submitted from: a job requeued by SLURM (SLURM_RESTART_COUNT > 0, the same job id) finds its run folder by that
sub-folder and resumes there; a new job never restores another job's checkpoint (lcsbench/commands/trainer.py).

Submitting is plain `sbatch --parsable` and waiting is polling `scontrol show job` (no accounting database needed,
so it works on the local test cluster of scripts/local_slurm.sh as on a real one).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

JOB_FOLDER_PREFIX = "slurm-job-"  # <run folder>/slurm-job-<id>/: the job's preemption checkpoints
RENDEZVOUS_TIMEOUT_ENV = "LCSBENCH_RENDEZVOUS_TIMEOUT_S"
RENDEZVOUS_TIMEOUT_S = 300.0  # how long a rank waits for rank 0's port before it gives up with one line
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}  # a job in one of these states will not run again (a requeued job goes back to PENDING)


class SlurmError(RuntimeError):
    """A SLURM command failed or a job did not end as asked; the message says which and what to do."""


# --- the job a process belongs to ------------------------------------------------------------------------------------


def in_slurm_job(env: Mapping[str, str] = os.environ) -> bool:
    return bool(env.get("SLURM_JOB_ID"))


def job_id(env: Mapping[str, str] = os.environ) -> str:
    """The job's id as `scontrol requeue` takes it: `<array job>_<task>` for an array task, else SLURM_JOB_ID."""
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else env.get("SLURM_JOB_ID", "")


def restart_count(env: Mapping[str, str] = os.environ) -> int:
    """How often SLURM has requeued this job (0 on its first start)."""
    try:
        return int(env.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def job_folder_name(env: Mapping[str, str] = os.environ) -> str:
    return f"{JOB_FOLDER_PREFIX}{job_id(env)}"


def requeued_run(runs: Path, env: Mapping[str, str] = os.environ) -> Path | None:
    """For a requeued job: the run folder under `runs` (a logger's save_dir/name) its first start trained into,
    recognised by its `slurm-job-<id>/` folder (the newest, should a job id have been used twice). None for a job
    on its first start, or when no run folder carries the job's id."""
    if not in_slurm_job(env) or restart_count(env) == 0 or not runs.is_dir():
        return None
    marked = [folder.parent for folder in runs.glob(f"*/{job_folder_name(env)}") if folder.is_dir()]
    return max(marked, key=lambda run: (run / job_folder_name(env)).stat().st_mtime) if marked else None


# --- rank 0 reachable, or one line saying why not (issue 34) -------------------------------------------------------


def is_local_address(address: str) -> bool:
    """Whether this machine can listen on `address` (rank 0 serves the rendezvous there)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
        return True
    except OSError:
        return False


def check_rank_zero(address: str, port: int, rank: int, timeout_s: float | None = None) -> None:
    """Before the process group forms: `address` must resolve; rank 0 must be able to serve on it; every other
    rank must reach `address:port` within `timeout_s` (LCSBENCH_RENDEZVOUS_TIMEOUT_S, default 300 s). Without this
    a name that does not resolve or a port nobody opens leaves the ranks waiting without end (c10d retries)."""
    if timeout_s is None:
        timeout_s = float(os.environ.get(RENDEZVOUS_TIMEOUT_ENV) or RENDEZVOUS_TIMEOUT_S)
    try:
        resolved = socket.getaddrinfo(address, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except (socket.gaierror, UnicodeError) as error:
        raise SlurmError(f"rank {rank}: rank 0's address {address!r} (MASTER_ADDR) does not resolve ({error}): set "
                         f"MASTER_ADDR to the first node's IP address, or add the node names to /etc/hosts "
                         f"(scripts/slurm_fit.sh sets it from `scontrol show node`'s NodeAddr)") from None
    if rank == 0:
        if not is_local_address(resolved):
            raise SlurmError(f"rank 0 runs on {socket.gethostname()} but MASTER_ADDR {address} ({resolved}) is not an "
                             f"address of this machine: rank 0 serves the rendezvous on MASTER_ADDR; set it to the "
                             f"first node's address")
        return
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        try:
            with socket.create_connection((resolved, port), timeout=min(10.0, timeout_s)):
                return
        except OSError as error:
            last = errno.errorcode.get(error.errno or 0, "") or type(error).__name__
        if time.monotonic() >= deadline:
            raise SlurmError(f"rank {rank} could not reach rank 0 at {address}:{port} ({resolved}) for {timeout_s:.0f} "
                             f"s (last: {last}): is rank 0 running, and is the port open between the nodes? "
                             f"({RENDEZVOUS_TIMEOUT_ENV} sets the wait)")
        time.sleep(1.0)


# --- submit and wait (for the study's runner and the cluster tests) ------------------------------------------------


def run_slurm(command: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60) -> str:
    """A SLURM client command's stdout; a failure raises SlurmError with its stderr."""
    try:
        done = subprocess.run(list(command), env=dict(env) if env is not None else None, capture_output=True,
                              text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{command[0]} is not installed: SLURM's client commands are needed (on a test machine: "
                         f"scripts/local_slurm.sh start)") from None
    if done.returncode != 0:
        raise SlurmError(f"{' '.join(command)} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def submit(script: str | Path, args: Sequence[str] = (), sbatch_options: Sequence[str] = (),
           after_ok: Sequence[str] = (), env: Mapping[str, str] | None = None, cwd: str | Path | None = None) -> str:
    """`sbatch [options] [--dependency=afterok:A:B] script args...`; returns the job id. `cwd` becomes the job's
    submit folder (its SLURM_SUBMIT_DIR)."""
    command = ["sbatch", "--parsable", *sbatch_options]
    if after_ok:
        command.append(f"--dependency=afterok:{':'.join(after_ok)}")
    command += [str(script), *map(str, args)]
    if cwd is not None:
        command.insert(1, f"--chdir={cwd}")
    out = run_slurm(command, env)
    match = re.match(r"\s*(\d+)", out)
    if not match:
        raise SlurmError(f"sbatch printed no job id: {out!r}")
    return match.group(1)


def job_fields(job: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`scontrol show job -o <job>` as {field: value} (JobState, RestartCnt, NodeList, ExitCode, ...); the first
    record for an array."""
    out = run_slurm(["scontrol", "show", "job", "-o", str(job)], env).strip().splitlines()
    return dict(re.findall(r"(\w+)=(\S*)", out[0])) if out else {}


def job_state(job: str, env: Mapping[str, str] | None = None) -> str:
    return job_fields(job, env).get("JobState", "UNKNOWN")


def array_states(job: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Every record's JobState for `job` (one per array task)."""
    out = run_slurm(["scontrol", "show", "job", "-o", str(job)], env)
    return re.findall(r"JobState=(\S+)", out)


def wait(jobs: Sequence[str], timeout: float, env: Mapping[str, str] | None = None, poll: float = 2.0,
         until: Sequence[str] = tuple(FINISHED)) -> dict[str, str]:
    """Wait until every job (every task of an array) is in a state of `until` (default: finished); returns
    {job: state} (for an array, its tasks' states joined by commas). Raises SlurmError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        states = {job: ",".join(array_states(job, env)) for job in jobs}
        if all(states[job] and all(s in until for s in states[job].split(",")) for job in jobs):
            return states
        if time.monotonic() > deadline:
            raise SlurmError(f"jobs still not {'/'.join(sorted(until))} after {timeout:.0f} s: {states}")
        time.sleep(poll)


ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}  # queued or running: not to submit again


def job_table(env: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Every job slurmctld still knows (`scontrol show job -o`, one call): {job id: its fields}. A job it has
    forgotten (finished longer ago than MinJobAge) is absent."""
    out = run_slurm(["scontrol", "show", "job", "-o"], env)
    table = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            table[fields["JobId"]] = fields
    return table


def cancel(jobs: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    if jobs:
        run_slurm(["scancel", *jobs], env)


def follow(jobs: Mapping[str, str], say, env: Mapping[str, str] | None = None, poll: float = 5.0) -> dict[str, str]:
    """Wait for named jobs ({what: job id}), saying each change of state (`say(line)`), until none is queued or
    running; returns {what: final state}. A job waiting on one that failed can never start (afterok): it is
    cancelled and reported as DEPENDENCY_FAILED. A job slurmctld forgot before it was seen to end (it ended longer
    ago than MinJobAge) reads FORGOTTEN: the caller judges it by its outputs. slurmctld out of reach for a minute
    (a restart) is waited out; longer raises SlurmError."""
    last: dict[str, str] = {}
    unreachable_since = None
    while True:
        try:
            table = job_table(env)
            unreachable_since = None
        except SlurmError:
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since > 60:
                raise
            time.sleep(poll)
            continue
        never = []
        for what, job in jobs.items():
            if last.get(what) and last[what].split(" ")[0] not in ACTIVE:
                continue  # finished as seen here: slurmctld forgets it later (MinJobAge), the state stays
            fields = table.get(job)
            state = fields.get("JobState", "UNKNOWN") if fields else "FORGOTTEN"
            if state == "PENDING" and fields.get("Reason") == "DependencyNeverSatisfied":
                state = "DEPENDENCY_FAILED"
                never.append(job)
            elif state == "PENDING" and fields.get("Reason") not in (None, "None"):
                state = f"PENDING ({fields['Reason']})"
            if state != last.get(what):
                where = f" on {fields['NodeList']}" if state == "RUNNING" and fields.get("NodeList") else ""
                say(f"SLURM job {job} ({what}): {state}{where}")
                last[what] = state
        cancel(never, env)
        if all(state.split(" ")[0] not in ACTIVE for state in last.values()):
            return last
        time.sleep(poll)
