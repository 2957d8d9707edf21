"""Multi-node for real (tests marked `cluster`, run by `.ci/run` with `pytest -m cluster`): a two-node SLURM cluster on
loopback (scripts/local_slurm.sh: slurmctld and `slurmd -N n1|n2` on this machine) and torchrun as two nodes, each
fit on a tiny config, CPU and gloo. They start and stop their own cluster and need root (the daemons) and
slurm-wlm + munge (installed with apt-get when missing).

`RankRecord` (below) is a callback the jobs' configs name (`tests.test_cluster.RankRecord`): every rank writes
what it saw (world size, node, samples, the step it started at) to a JSON file the test reads.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from lcsbench import slurm
from tests.conftest import run_killing_on_timeout

pytestmark = [pytest.mark.cluster, pytest.mark.blender]
REPO = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO / "scripts" / "local_slurm.sh"
JOB_TIMEOUT_S = 420  # one tiny two-rank fit on a loaded 2-core machine takes about a minute


class RankRecord(L.Callback):
    """Writes OUT/rank<R>-start<S>.json at the end of a fit: world size, node, the step the fit started at, the
    sample keys of every training batch and validation pass; rank 0 writes OUT/progress (the step) as it trains.
    `seconds_per_step` slows training down so that a test can signal a job mid-fit."""

    def __init__(self, out: str, seconds_per_step: float = 0.0):
        self.out, self.seconds_per_step = Path(out), seconds_per_step
        self.train_keys: list[list[str]] = []
        self.val_keys: list[str] = []
        self.val_steps: list[int] = []  # the optimizer step at each validation pass
        self.start_step = 0

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step
        node = os.environ.get("SLURMD_NODENAME", trainer.node_rank)
        print(f"RankRecord: rank {trainer.global_rank} of {trainer.world_size} on node {node} starts at step "
              f"{trainer.global_step}", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_keys.append(list(batch["key"]))
        if trainer.is_global_zero:
            (self.out / "progress").write_text(str(trainer.global_step))
        time.sleep(self.seconds_per_step)

    def on_validation_epoch_start(self, trainer, pl_module):
        self.val_steps.append(trainer.global_step)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val_keys += list(batch["key"])

    def on_fit_end(self, trainer, pl_module):
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "num_nodes": trainer.num_nodes,
                  "node_rank": trainer.node_rank, "node": os.environ.get("SLURMD_NODENAME"),
                  "start_step": self.start_step, "global_step": trainer.global_step,
                  "accumulate": trainer.accumulate_grad_batches, "log_dir": trainer.log_dir,
                  "train_keys": self.train_keys, "val_keys": self.val_keys, "val_steps": self.val_steps}
        (self.out / f"rank{trainer.global_rank}-start{self.start_step}.json").write_text(json.dumps(record))


def tiny_config(directory: Path, root: Path, steps: int, seconds_per_step: float = 0.0) -> Path:
    """A micro EDM2 fit over the tiny render: global batch 8 = 2 ranks x 4 images, a checkpoint every 2 steps."""
    (directory / "out").mkdir(parents=True, exist_ok=True)
    path = directory / "tiny.yaml"
    path.write_text(f"""
seed_everything: 0
trainer:
  max_steps: {steps}
  log_every_n_steps: 1
  limit_val_batches: 2
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: "{directory / 'runs'}"}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{every_n_train_steps: 2, save_last: true}}
    - class_path: tests.test_cluster.RankRecord
      init_args: {{out: "{directory / 'out'}", seconds_per_step: {seconds_per_step}}}
model:
  class_path: lcsbench.models.edm2.EDM2Diffusion
  init_args:
    net:
      class_path: lcsbench.nn.edm2.Precond
      init_args: {{img_resolution: 32, img_channels: 3, model_channels: 16, channel_mult: [1, 2], num_blocks: 1,
                   attn_resolutions: [16], channels_per_head: 16, dropout: 0.0}}
    lr: 0.01
    lr_rampup_images: 64
data:
  class_path: lcsbench.data.datamodule.CLEVRDataModule
  init_args: {{root: "{root}", counts: 1-3, grid_size: 16, batch_size: 4, global_batch_size: 8, num_workers: 0,
               val_batch_size: 2, resolution: 32, steps_per_epoch: 4, shuffle_buffer: 8}}
""")
    return path


def records(directory: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((directory / "out").glob("rank*.json"))]


@pytest.fixture(scope="module")
def cluster():
    """The environment of a running local two-node SLURM cluster (started here, stopped after the module)."""
    if os.geteuid() != 0:
        pytest.skip("starting a local SLURM cluster needs root (munged, slurmctld, slurmd): run as root, or run "
                    "scripts/local_slurm.sh start once as root")
    started = subprocess.run([str(LOCAL_SLURM), "start"], capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        reason = started.stderr.strip().splitlines()[-1] if started.stderr.strip() else "no message"
        if "install" in reason:  # packages missing and not installable here: the one case to skip
            pytest.skip(reason)
        pytest.fail(f"scripts/local_slurm.sh start failed: {started.stderr[-2000:]}")
    conf = started.stdout.strip().splitlines()[-1].split("=", 1)[1]
    env = {**os.environ, "SLURM_CONF": conf, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for name in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "SLURM_CONF"]:
        env.pop(name)  # not a job of an outer cluster
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    yield env
    subprocess.run([str(LOCAL_SLURM), "stop"], timeout=120)


def submit_fit(env: dict, directory: Path, config: Path, *flags: str, extra_env: str = "") -> str:
    """`sbatch --nodes 2 --ntasks-per-node 1 --gpus-per-node 0 scripts/slurm_fit.sh <config>` from `directory`."""
    options = ["--nodes", "2", "--ntasks-per-node", "1", "--gpus-per-node", "0", "--cpus-per-task", "1",
               "--time", "15", "--output", str(directory / "job-%j.out")]
    if extra_env:
        options.append(f"--export=ALL,{extra_env}")
    return slurm.submit(REPO / "scripts" / "slurm_fit.sh", [str(config), *flags], sbatch_options=options,
                        cwd=directory, env=env)


def job_log(directory: Path, job: str) -> str:
    path = directory / f"job-{job}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def finished(env: dict, directory: Path, job: str, timeout: float = JOB_TIMEOUT_S) -> str:
    try:
        return slurm.wait([job], timeout, env)[job]
    except slurm.SlurmError:
        subprocess.run(["scancel", job], env=env)
        pytest.fail(f"job {job} did not finish in {timeout} s:\n{job_log(directory, job)[-4000:]}")


def wait_for_step(directory: Path, step: int) -> None:
    """Until rank 0 has trained `step` optimizer steps (RankRecord's progress file)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    progress = directory / "out" / "progress"
    while time.monotonic() < deadline and int((progress.read_text() or 0) if progress.exists() else 0) < step:
        time.sleep(0.5)


def check_two_rank_fit(ranks: list[dict], steps: int, nodes: set, keys_per_rank: int = 4) -> None:
    """World size 2 over 2 nodes, the config's global batch (2 x 4, one round), each rank its own samples."""
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert {r["num_nodes"] for r in ranks} == {2} and sorted(r["node_rank"] for r in ranks) == [0, 1]
    assert {r["node"] for r in ranks} == nodes
    assert {r["global_step"] for r in ranks} == {steps} and {r["accumulate"] for r in ranks} == {1}
    assert all(len(batch) == keys_per_rank for r in ranks for batch in r["train_keys"])
    assert ranks[0]["train_keys"] != ranks[1]["train_keys"]  # each rank draws its own stream (datasets.py)
    assert ranks[0]["val_keys"] and not set(ranks[0]["val_keys"]) & set(ranks[1]["val_keys"])  # a split pass
    assert len({r["log_dir"] for r in ranks}) == 1  # one run folder, rank 0's


def test_slurm_fit_on_two_nodes(cluster, clevr_shards, tmp_path):
    config = tiny_config(tmp_path, clevr_shards, steps=6)
    job = submit_fit(cluster, tmp_path, config)
    state = finished(cluster, tmp_path, job)
    log = job_log(tmp_path, job)
    assert state == "COMPLETED", log[-4000:]
    assert "on 2 node(s) x 1 task(s) (cpu), rank 0 at 127.0.0.1" in log  # NodeAddr, not the name n1
    assert "global batch 8 = 2 rank(s) x 4 images x 1 accumulation round(s)" in log
    check_two_rank_fit(records(tmp_path), steps=6, nodes={"n1", "n2"})
    runs = tmp_path / "runs" / "lightning_logs"
    assert [p.name for p in runs.iterdir()] == ["version_0"]  # one rank writes checkpoints and logs
    run = runs / "version_0"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    assert (run / f"slurm-job-{job}").is_dir() and not list(tmp_path.glob("hpc_ckpt_*"))


def test_preempted_job_resumes_in_its_run_and_a_new_job_starts_from_zero(cluster, clevr_shards, tmp_path):
    config = tiny_config(tmp_path, clevr_shards, steps=24, seconds_per_step=1.0)
    job = submit_fit(cluster, tmp_path, config)
    wait_for_step(tmp_path, 5)
    slurm.run_slurm(["scancel", "--signal", "USR1", job], cluster)  # SLURM's warning signal, as --signal sends it
    state = finished(cluster, tmp_path, job)
    log = job_log(tmp_path, job)
    assert state == "COMPLETED", log[-4000:]
    assert int(slurm.job_fields(job, cluster)["Restarts"]) >= 1, log[-4000:]
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    saved = sorted((run / f"slurm-job-{job}").glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in saved] == ["hpc_ckpt_1.ckpt"], log[-4000:]
    saved_step = torch.load(saved[0], weights_only=False)["global_step"]
    assert 5 <= saved_step < 24
    assert f"Restoring states from the checkpoint path at {saved[0]}" in log
    resumed = [r for r in records(tmp_path) if r["start_step"] > 0]
    assert [r["start_step"] for r in resumed] == [saved_step, saved_step]  # both ranks, from the saved step
    check_two_rank_fit(resumed, steps=24, nodes={"n1", "n2"})
    assert [p.name for p in run.parent.iterdir()] == ["version_0"]  # the requeued job trained in its own folder
    for checkpoint in run.rglob("*.ckpt"):  # every checkpoint whole (Lightning writes through a transaction)
        assert torch.load(checkpoint, weights_only=False)["global_step"] > 0
    for line in log.splitlines():
        if any(s in line for s in ("auto-requeue signal", "requeued (restart", "Restoring states", "starts at step")):
            print(line)
    print(f"{saved[0]} holds step {saved_step}")

    # a new job from the same folder, even beside a stale hpc_ckpt_1.ckpt (where Lightning used to write it)
    shutil.copy(saved[0], tmp_path / "hpc_ckpt_1.ckpt")
    for record in (tmp_path / "out").glob("rank*.json"):
        record.unlink()
    second = submit_fit(cluster, tmp_path, config, "--trainer.max_steps", "4")
    assert finished(cluster, tmp_path, second) == "COMPLETED", job_log(tmp_path, second)[-4000:]
    assert "Restoring states" not in job_log(tmp_path, second)
    assert [r["start_step"] for r in records(tmp_path)] == [0, 0]
    assert {r["global_step"] for r in records(tmp_path)} == {4}
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0", "version_1"]


def test_scontrol_requeue_resumes_from_the_runs_last_checkpoint(cluster, clevr_shards, tmp_path):
    """Requeued without the warning signal (no preemption checkpoint): the job continues in its run folder from
    its last checkpoint, not from step 0 in a new folder."""
    config = tiny_config(tmp_path, clevr_shards, steps=16, seconds_per_step=1.0)
    job = submit_fit(cluster, tmp_path, config)
    wait_for_step(tmp_path, 5)
    slurm.run_slurm(["scontrol", "requeue", job], cluster)
    state = finished(cluster, tmp_path, job)
    log = job_log(tmp_path, job)
    assert state == "COMPLETED" and int(slurm.job_fields(job, cluster)["Restarts"]) >= 1, log[-4000:]
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert f"no preemption checkpoint of the job in {run} newer than {run / 'checkpoints' / 'last.ckpt'}" in log
    resumed = [r for r in records(tmp_path) if r["start_step"] > 0]
    assert len({r["start_step"] for r in resumed}) == 1 and resumed[0]["start_step"] >= 4, log[-4000:]
    check_two_rank_fit(resumed, steps=16, nodes={"n1", "n2"})
    assert [p.name for p in run.parent.iterdir()] == ["version_0"]


@pytest.mark.parametrize("address, said", [("n1", "rank 0's address 'n1' (MASTER_ADDR) does not resolve"),
                                           ("192.0.2.1", "MASTER_ADDR 192.0.2.1 (192.0.2.1) is not an address")])
def test_unreachable_rank_zero_fails_with_one_line(cluster, clevr_shards, tmp_path, address, said):
    """A node name that does not resolve (Lightning's default: the first node's name) or an address no rank serves
    on: the job fails within a bounded time, naming the address, instead of waiting without end."""
    config = tiny_config(tmp_path, clevr_shards, steps=2)
    started = time.monotonic()
    job = submit_fit(cluster, tmp_path, config,
                     extra_env=f"MASTER_ADDR={address},{slurm.RENDEZVOUS_TIMEOUT_ENV}=20")
    state = finished(cluster, tmp_path, job, timeout=240)
    log = job_log(tmp_path, job)
    assert state == "FAILED" and said in log, log[-4000:]
    assert time.monotonic() - started < 240
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_as_two_nodes_on_loopback(cluster, clevr_shards, tmp_path):
    """scripts/torchrun_fit.sh on node ranks 0 and 1 (NNODES=2, MASTER_ADDR 127.0.0.1): the SLURM job's checks."""
    config = tiny_config(tmp_path, clevr_shards, steps=6)
    env = {**cluster, "NNODES": "2", "GPUS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    script = str(REPO / "scripts" / "torchrun_fit.sh")
    node1 = subprocess.Popen([script, str(config)], env={**env, "NODE_RANK": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        node0 = run_killing_on_timeout([script, str(config)], {**env, "NODE_RANK": "0"}, JOB_TIMEOUT_S, "node 0")
        output1, _ = node1.communicate(timeout=60)
    finally:
        if node1.poll() is None:
            os.killpg(node1.pid, 9)
    assert node0.returncode == 0 and node1.returncode == 0, node0.stdout[-3000:] + output1[-3000:]
    assert "global batch 8 = 2 rank(s) x 4 images x 1 accumulation round(s)" in node0.stdout
    check_two_rank_fit(records(tmp_path), steps=6, nodes={None})
    runs = tmp_path / "runs" / "lightning_logs"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    assert torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6


def test_render_array_equals_one_machine_render(cluster, clevr_shards, tmp_path):
    """scripts/render_cluster.sh as a two-task array: together the same shards as the one-machine fixture render
    (tests/conftest.py TINY_DATASET), and a manifest that lists and checksums every shard."""
    from tests.conftest import TINY_DATASET
    from tests.test_render import shard_bytes

    out = tmp_path / "render"
    job = slurm.submit(REPO / "scripts" / "render_cluster.sh",
                       [str(out), "1-3", str(TINY_DATASET["per_count"]), str(TINY_DATASET["resolution"]),
                        "--val-per-count", str(TINY_DATASET["val_per_count"]), "--samples-per-pixel",
                        str(TINY_DATASET["samples"]), "--shard-size", str(TINY_DATASET["shard_size"]), "--seed", "0"],
                       sbatch_options=["--array=0-1", "--cpus-per-task", "1", "--mem", "1G", "--time", "15",
                                       "--output", str(tmp_path / "render-%A_%a.out")], cwd=tmp_path, env=cluster)
    states = slurm.wait([job], JOB_TIMEOUT_S, cluster)[job]
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("render-*.out")))
    assert states == "COMPLETED,COMPLETED", logs[-4000:]
    assert shard_bytes(out) == shard_bytes(clevr_shards)
    ours, theirs = (json.loads((root / "manifest.json").read_text()) for root in (out, clevr_shards))
    assert ours["shards"] == theirs["shards"]
    assert ours["shard_sha256"] == theirs["shard_sha256"] and len(ours["shard_sha256"]) == 9


# --- the study through SLURM (reproduce --slurm) --------------------------------------------------------------------

# the smoke study's Exp 1 and the closed form it is measured against (every kind of part, each once): the whole
# smoke study took 20+ minutes through SLURM on 2 busy cores and as long again locally, mostly evaluations;
# tests/test_slurm_study.py checks that every experiment's parts are submitted
STUDY = "exp1,cf_empirical_all"
STUDY_PARTS = {"render", "fit exp1", "spec cf_empirical_all", "evaluate exp1", "evaluate cf_empirical_all", "report"}
NOT_COMPARED = ("slurm/", "slurm_jobs.json", ".reproduce", ".timings.lock")  # what only a --slurm study writes


def study_files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
            and not str(p.relative_to(out)).startswith(NOT_COMPARED)}


def structure(value):
    """A JSON document's shape: its keys all the way down, with leaves replaced by their kind."""
    if isinstance(value, dict):
        return {key: structure(item) for key, item in value.items()}
    if isinstance(value, list):
        return [structure(item) for item in value[:1]]
    return type(value).__name__ if value is not None else None


@pytest.mark.timeout(3600)
def test_smoke_study_through_slurm_writes_the_local_runs_report(cluster, tmp_path):
    """`reproduce --scale smoke --slurm` (STUDY) on the two-node cluster: one job per part of the study, each evaluation
    after its fit, the report after everything, ids in OUT/slurm_jobs.json; submitted with --no-wait, then followed
    by a second call that submits nothing twice (a local run meanwhile is refused); the same report files as the
    local runner's (run after it on the same render); a last call submits nothing."""
    data, out = tmp_path / "data", tmp_path / "slurm_out"
    base = [sys.executable, "-m", "lcsbench", "reproduce", "--scale", "smoke", "--data", str(data), "--experiments",
            STUDY]
    on_slurm = [*base, "--out", str(out), "--runs", str(tmp_path / "slurm_runs"), "--slurm", "--time", "30",
                "--cpus-per-task", "1"]
    started = time.monotonic()
    submitted = run_killing_on_timeout([*on_slurm, "--no-wait"], cluster, 300, "reproduce --slurm --no-wait")
    assert submitted.returncode == 0 and "not waiting (--no-wait)" in submitted.stdout, submitted.stdout[-4000:]
    jobs = json.loads((out / "slurm_jobs.json").read_text())["jobs"]
    assert set(jobs) == STUDY_PARTS and submitted.stdout.count("submitted as SLURM job") == len(STUDY_PARTS)
    ids = {part: entry["id"] for part, entry in jobs.items()}
    assert set(jobs["evaluate exp1"]["after"]) == {ids["fit exp1"], ids["spec cf_empirical_all"]}
    assert jobs["evaluate cf_empirical_all"]["after"] == [ids["spec cf_empirical_all"]]
    assert set(jobs["report"]["after"]) == set(ids.values()) - {ids["report"]}
    refused = run_killing_on_timeout([*base, "--out", str(out), "--runs", str(tmp_path / "slurm_runs")], cluster,
                                     300, "reproduce (local, beside the jobs)")
    assert refused.returncode != 0 and "SLURM job(s) of this study are queued or running" in refused.stdout

    followed = run_killing_on_timeout(on_slurm, cluster, 1800, "reproduce --slurm (following)")
    seconds = time.monotonic() - started
    assert followed.returncode == 0, followed.stdout[-6000:]
    assert "submitted as SLURM job" not in followed.stdout  # queued and running jobs are not submitted twice
    assert "still queued or running, not submitted again" in followed.stdout
    assert json.loads((out / "slurm_jobs.json").read_text())["jobs"] == jobs
    table = slurm.job_table(cluster)
    assert {part: table[job]["JobState"] for part, job in ids.items() if job in table} == {
        part: "COMPLETED" for part, job in ids.items() if job in table}
    timings = json.loads((out / "timings.json").read_text())  # every command's time, from jobs ending at once
    assert {"fit exp1", "lengthgen exp1", "lengthgen_random exp1", "locality exp1", "r2 exp1",
            "lengthgen cf_empirical_all"} <= set(timings)

    local_out = tmp_path / "local_out"
    local = run_killing_on_timeout([*base, "--out", str(local_out), "--runs", str(tmp_path / "local_runs")],
                                   cluster, 1800, "reproduce (local)")
    assert local.returncode == 0, local.stdout[-6000:]
    assert study_files(out) == study_files(local_out)
    report, local_report = (json.loads((folder / "report.json").read_text()) for folder in (out, local_out))
    assert [g["id"] for g in report["goals"]] == [g["id"] for g in local_report["goals"]]
    assert set(report["experiments"]) == set(local_report["experiments"]) == {"exp1"}
    assert report["experiments"]["exp1"]["steps"] == local_report["experiments"]["exp1"]["steps"] == 20
    assert structure({k: v for k, v in report.items() if k not in ("timings", "machine")}) == structure(
        {k: v for k, v in local_report.items() if k not in ("timings", "machine")})
    # the same numbers too (seeded fits and evaluations, one thread each): the tables differ in the busy time only
    table, local_table = ((folder / "table.md").read_text().splitlines() for folder in (out, local_out))
    assert [line for line in table if "busy_hours" not in line] == [
        line for line in local_table if "busy_hours" not in line]

    # everything is done: one more call submits nothing and runs nothing
    commands = (out / "commands.sh").read_text()
    again = run_killing_on_timeout(on_slurm, cluster, 300, "reproduce --slurm (again)")
    assert again.returncode == 0, again.stdout[-4000:]
    assert "every part of the study is done: nothing submitted" in again.stdout
    assert json.loads((out / "slurm_jobs.json").read_text())["jobs"] == jobs
    assert (out / "commands.sh").read_text() == commands
    print(f"\nreproduce --slurm, smoke scale: {len(ids)} jobs, submitted and followed in {seconds:.0f} s; "
          f"report {out / 'table.md'}")
    for line in (submitted.stdout + followed.stdout).splitlines():
        if "SLURM job" in line or "not submitted" in line:
            print(line)
    print(again.stdout.strip().splitlines()[-1])
