"""One `reproduce` invocation: its paths, the command log (commands.sh), timings.json, the jobs it starts (pinned to
cores, one at a time or --parallel N) and the lock that keeps two studies out of one folder."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lcsbench
from lcsbench.commands._common import usable_core_ids, usable_cores
from lcsbench.study import processes
from lcsbench.study.records import Experiment, experiment
from lcsbench.study.scales import Scale, config_paths, read_config

RUN_VERSION = "run"  # the TensorBoardLogger version folder: a resumed fit writes into the same folder
LOCK_NAME = ".reproduce.lock"


def read_json(path: Path) -> dict | None:
    """A study file's JSON, or None when it is missing or unreadable (half written, damaged): an unreadable file
    is named and then treated as missing, so the stage that writes it runs again."""
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        print(f"reproduce: {path} is unreadable ({error}): treated as missing, its stage rebuilds it", flush=True)
        return None
    return document if isinstance(document, dict) else None


TIMING_ENTRY = re.compile(r'"((?:[^"\\]|\\.)+)":\s*\{\s*"seconds":\s*([0-9.eE+-]+),\s*"finished":\s*"([^"]+)"\s*\}')


def read_timings(path: Path, aside: bool = False) -> dict:
    """OUT/timings.json's entries. A damaged file (cut short, overwritten) is not taken as empty: its whole entries
    are recovered and the loss is said; with `aside` (before a write) the damaged file is kept beside it."""
    if not path.exists():
        return {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        text = ""
    with contextlib.suppress(json.JSONDecodeError):
        document = json.loads(text)
        if isinstance(document, dict):
            return document
    recovered = {name: {"seconds": float(seconds), "finished": finished}
                 for name, seconds, finished in TIMING_ENTRY.findall(text)}
    kept = ""
    if aside:
        damaged = path.with_name(f"{path.name}.damaged-{datetime.datetime.now():%Y%m%dT%H%M%S}")
        path.replace(damaged)
        kept = f"; the damaged file is kept as {damaged}"
    print(f"reproduce: {path} is unreadable: {len(recovered)} whole timing entr{'y' if len(recovered) == 1 else 'ies'} "
          f"recovered from it, any other entry is lost (the study's busy time counts only what is recorded){kept}",
          flush=True)
    return recovered


def write_atomic(path: Path, text: str) -> None:
    """Write a study file whole or not at all (a temporary file, then a rename): a crash leaves the old one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def flags(options: dict) -> list[str]:
    """Command-line flags of a dict: `{"ks": "1-4"}` -> --ks 1-4; a value True is a bare switch (--no-oracle)."""
    return [item for name, value in options.items()
            for item in ((f"--{name}",) if value is True else (f"--{name}", str(value)))]


@dataclass
class Study:
    """What one `reproduce` invocation works on, and how it runs and records commands."""

    scale: Scale
    out: Path
    runs: Path
    data: Path | None  # --data: the root of the scale's one render, replacing its default
    experiments: list[str]
    judge: str | None
    dry_run: bool
    argv_base: list[str] = field(default_factory=list)  # the reproduce flags that name this study (for the log)
    parallel: int = 1  # commands at once (fits, evaluations), each pinned to its own cores (run_jobs)
    chosen: bool = False  # --experiments named them (the report then refuses missing outputs of any)
    running: list = field(default_factory=list)  # the commands started and not finished (ended with the study)
    slurm_job: str | None = None  # the part of a study submitted with --slurm that this invocation runs as one job
    quiet: bool = False  # say nothing (checking what is current before submitting jobs)

    @property
    def scale_name(self) -> str:
        return self.scale.name

    @property
    def trained(self) -> list[str]:
        """The chosen experiments that train (a fit config), in the order given."""
        return [name for name in self.experiments if experiment(name).trained]

    @property
    def closed_forms(self) -> list[str]:
        """The chosen closed forms: built from the render, nothing to train."""
        return [name for name in self.experiments if not experiment(name).trained]

    def record_of(self, name: str) -> Experiment:
        return experiment(name)

    def render_root(self, counts: str) -> Path:
        """The folder of the render that feeds experiments of these object counts (--data replaces it)."""
        key = self.scale.render_for(counts)
        return self.data if self.data is not None else Path(self.scale.renders[key]["root"])

    def spec(self, name: str) -> Path:
        return self.out / "closed_forms" / f"{name}.pt"

    def log_dir(self, exp: str) -> Path:
        return self.runs / exp / "lightning_logs" / RUN_VERSION

    def last_ckpt(self, exp: str) -> Path:
        return self.log_dir(exp) / "checkpoints" / "last.ckpt"

    def weights(self, exp: str) -> Path:
        return self.out / "weights" / f"{exp}.pt"

    def configs(self, exp: str) -> list[Path]:
        """The experiment's fit config stack at this scale."""
        return config_paths(experiment(exp), self.scale_name)

    def config(self, exp: str) -> dict:
        return read_config(self.configs(exp))

    def say(self, text: str) -> None:
        if self.quiet:
            return
        print(f"reproduce [{self.scale_name}]: {text}", flush=True)

    def record(self, argv: list[str], what: str) -> None:
        """Append a command line to OUT/commands.sh (never in a dry run)."""
        if self.dry_run:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        log = self.out / "commands.sh"
        if not log.exists():
            log.write_text("#!/usr/bin/env bash\n# The commands `python -m lcsbench reproduce` ran, in order, "
                           "appended by every run\n# (python = the interpreter that ran reproduce).\n")
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        with log.open("a") as handle:
            handle.write(f"# {stamp} {what}\n{shlex.join(argv)}\n")

    def start(self, argv: list[str], what: str, cores: list[int] | None = None) -> subprocess.Popen | None:
        """Start `python -m lcsbench ...` (argv without the interpreter) as a subprocess, pinned to `cores` with as
        many threads, or on every core this process may use; None in a dry run (the line is printed)."""
        threads = len(cores) if cores else usable_cores()
        pin = ["taskset", "-c", ",".join(map(str, cores)), "env", f"OMP_NUM_THREADS={threads}"] if cores else []
        line = [*pin, "python", "-m", "lcsbench", *argv]
        if self.dry_run:
            print(shlex.join(line), flush=True)
            return None
        self.say(f"{what}: {shlex.join(line)}")
        self.record(line, what)
        env = dict(os.environ)  # the child imports the same lcsbench as this process
        # threads = the cores the command runs on: threads beyond the cores, or a fit beside another one on the
        # same cores, run many times slower; unpinned, a user's own OMP_NUM_THREADS wins
        if cores:
            env["OMP_NUM_THREADS"] = str(threads)
        else:
            env.setdefault("OMP_NUM_THREADS", str(threads))
        package_root = str(Path(lcsbench.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        if self.slurm_job is not None:  # one part of a --slurm study: its command runs as it does locally (a
            # SLURM-aware fit would take the one-task job for a DDP launch); a requeued job resumes from last.ckpt
            env = {name: value for name, value in env.items() if not name.startswith(("SLURM_", "SRUN_"))}
        process = subprocess.Popen([*processes.LCSBENCH, *argv], env=env, preexec_fn=processes.child_setup(cores))
        process.started, process.what, process.line = time.perf_counter(), what, line
        self.running.append(process)
        return process

    def finish(self, process: subprocess.Popen | None) -> float:
        """Wait for a started command; its seconds (recorded in timings.json), or the error naming it."""
        if process is None:
            return 0.0
        code = process.wait()
        seconds = time.perf_counter() - process.started
        if process in self.running:
            self.running.remove(process)
        if code != 0:
            raise SystemExit(f"reproduce: {process.what} failed (exit code {code}) after {seconds:.0f} s: "
                             f"`{shlex.join(process.line)}`. Fix what it reported and rerun the same reproduce "
                             f"command: finished work is kept and the stage resumes")
        self.timing(process.what, seconds)
        return seconds

    def run(self, argv: list[str], what: str) -> float:
        """Run `python -m lcsbench ...` to its end on every usable core; its seconds."""
        return self.finish(self.start(argv, what))

    def in_process(self, stage: str, exp: str | None, what: str) -> None:
        """Log the reproduce line that redoes an in-process step (export, report), or print it in a dry run."""
        line = ["python", "-m", "lcsbench", "reproduce", *self.argv_base, "--stage", stage]
        if exp is not None:
            line += ["--experiments", exp]
        if self.dry_run:
            print(shlex.join(line) + f"   # {what}", flush=True)
            return
        self.say(what)
        self.record(line, what)

    def timing(self, what: str, seconds: float) -> None:
        """Add the seconds of a step to OUT/timings.json (the report reads them): the file is appended to, never
        rebuilt from one entry; an unreadable one is renamed aside first, its recoverable entries kept."""
        from lcsbench.data.locks import exclusive_lock

        path = self.out / "timings.json"
        with exclusive_lock(self.out / ".timings.lock"):  # SLURM jobs of one study end at once: no entry lost
            timings = read_timings(path, aside=True)
            timings[what] = {"seconds": round(seconds, 1),
                             "finished": datetime.datetime.now().isoformat(timespec="seconds")}
            write_atomic(path, json.dumps(timings, indent=2))

    def refuse(self, text: str) -> None:
        """A missing input: in a dry run a note (an earlier stage of the same run may make it), else the error."""
        if self.dry_run:
            print(f"# (would need: {text})", flush=True)
            return
        raise SystemExit(f"reproduce: {text}")


@contextlib.contextmanager
def study_lock(*folders: Path, part: str | None = None):
    """Hold an exclusive lock on each folder (its LOCK_NAME file, with this process's pid) for the duration, so
    that two `reproduce` runs never train or write into one study at once; a held lock is refused with its
    holder's pid. The operating system drops the lock when the holder dies, so a crash leaves nothing to clean.
    A SLURM job of a study (`part`, e.g. "fit exp1") locks its own part only: the study's jobs run side by side."""
    from lcsbench.data.locks import hold_or_name_holder

    name = LOCK_NAME if part is None else f"{LOCK_NAME[:-5]}-jobs/{re.sub(r'[^A-Za-z0-9_.-]+', '-', part)}.lock"
    handles = []
    try:
        for folder in folders:
            handle = hold_or_name_holder(folder / name, str(os.getpid()))
            if isinstance(handle, str):
                raise SystemExit(f"reproduce: another reproduce (pid {handle or 'unknown'}) is working on {folder} "
                                 f"({folder / name}): wait for it to end, or stop it, then rerun this "
                                 f"command; two studies at once would train into the same runs")
            handles.append(handle)
        yield
    finally:
        for handle in handles:
            handle.close()


@dataclass
class Job:
    """One `python -m lcsbench ...` command of a stage, with what to do just before and after it runs."""

    argv: list[str]
    what: str
    before: Callable[[], None] | None = None  # run just before the command starts (e.g. copy shared oracle renders)
    after: Callable[[], None] | None = None  # run when it ended well (e.g. check the fit, stamp the evaluation)
    beside: bool = False  # a check beside the table's rows (random k-subsets, the steps check): run last


def core_slots(parallel: int) -> list[list[int]]:
    """The usable cores split into `parallel` disjoint groups, one per concurrent command."""
    cores = usable_core_ids()
    if parallel > len(cores):
        raise SystemExit(f"reproduce: --parallel {parallel} needs at least {parallel} cores, this process may "
                         f"use {len(cores)}: pass --parallel {len(cores)} or fewer")
    return [cores[i::parallel] for i in range(parallel)]


def run_jobs(study: Study, jobs: list[Job]) -> None:
    """Run a stage's commands: one after another on every core, or with --parallel N, N at a time, each pinned to
    its own cores with that many threads (never two on one core: a fit beside another job with default threads
    ran 26x slower). A failure lets the running commands finish, starts no new one, then is raised."""
    if study.parallel == 1:
        for job in jobs:
            if job.before is not None:
                job.before()
            study.run(job.argv, job.what)
            if job.after is not None and not study.dry_run:
                job.after()
        return
    pending, free = list(jobs), core_slots(study.parallel)
    running: list[tuple[Job, subprocess.Popen, list[int]]] = []
    failure = None
    while pending or running:
        while pending and free:
            job, cores = pending.pop(0), free.pop(0)
            if job.before is not None:
                job.before()
            running.append((job, study.start(job.argv, job.what, cores), cores))
        done = [entry for entry in running if entry[1] is None or entry[1].poll() is not None]  # None: dry run
        if not done:
            time.sleep(2)
            continue
        for entry in done:
            running.remove(entry)
            job, process, cores = entry
            free.append(cores)
            try:
                study.finish(process)
                if job.after is not None and not study.dry_run:
                    job.after()
            except SystemExit as error:  # let the other commands finish their work before reporting it
                failure = failure or error
                pending.clear()
    if failure is not None:
        raise failure
