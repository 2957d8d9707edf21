"""`python -m lcsbench reproduce`: the paper's Table 1 contrast and Figure 2 measured end to end (issue 15).

Examples:

    python -m lcsbench reproduce --scale smoke --out reports/reproduction/smoke          # minutes, CPU
    python -m lcsbench reproduce --scale cpu --out reports/reproduction/cpu --stage evaluate
    python -m lcsbench reproduce --scale paper --out reports/reproduction/paper --dry-run

Stages (`--stage all` runs them in this order; each is skipped where its outputs exist, resumes where a
previous run stopped, and refuses with a message naming the stage to run when what it needs is missing):

    render     python -m lcsbench render ... into --data (resumes itself; skipped when every shard is there)
    fit        per experiment python -m lcsbench fit --config <scale config> into RUNS/<exp>/lightning_logs/run,
               resumed from its last.ckpt; skipped when last.ckpt holds max_steps
    export     the EMA weights of each run into OUT/weights/<exp>.pt (+ .json): small files that every command
               takes as --ckpt, carrying the trained counts, label mode, grid size and resolution that
               `lengthgen` reads, the step, the training wall time and the run's config
    evaluate   per experiment python -m lcsbench lengthgen (with the Blender oracle row, rendered once and
               shared by the experiments) into OUT/<exp>/lengthgen and python -m lcsbench locality into
               OUT/<exp>/locality; skipped when they were made from the current weights
    report     OUT/table.md (Table 1's row beside lcsbench's, the pre-registered goals, per-k success with 95%
               Wilson intervals beside the oracle), OUT/report.json (every number, configs, wall times, the
               machine), OUT/success_vs_k.png, OUT/locality_radius.png, OUT/locality_maps.png,
               OUT/samples_by_k.png; rebuilt when an input is newer than report.json

Every command a stage runs is appended to OUT/commands.sh (export and report as the `reproduce` line that
redoes them); --dry-run prints the commands and runs nothing. Scales (SCALES below): `smoke` (tiny, the
pipeline only, tested in CI), `cpu` (32 px, G = 16, what 2 CPU cores train in hours; configs/reproduce/cpu/),
`paper` (64 px, edm2-img64-xs, G = 16: configs/exp1.yaml, exp2.yaml, exp3.yaml, for a GPU cluster).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lcsbench
from lcsbench.commands._common import (DEFAULT_SIGMAS, CommandParser, command_parser, usable_core_ids,
                                      usable_cores)

# --- scales: what each one renders, trains and evaluates --------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """One scale of the study, declared once: the render, the fit config of each experiment, the evaluation."""

    data: str  # default --data: where the render goes and the configs' data root
    render: dict  # `python -m lcsbench render` flags besides --out
    configs: dict  # experiment -> its `fit` config (exp1: global, all labels; exp2: global, single; exp3: patch)
    lengthgen: dict  # `python -m lcsbench lengthgen` flags besides --ckpt, --out, --name, --judge
    locality: dict  # `python -m lcsbench locality` flags besides --ckpt, --out
    note: str = ""  # one line for --help
    lengthgen_by_experiment: dict = field(default_factory=dict)  # exp -> lengthgen flags replacing the scale's
    closed_forms: dict = field(default_factory=dict)  # name -> `closed-form spec` flags besides --render, --out
    closed_form_locality: dict = field(default_factory=dict)  # locality flags replacing the scale's for them
    r2: dict = field(default_factory=dict)  # `closed-form r2` flags besides --ckpt, --spec, --out

    @property
    def resolution(self) -> int:
        return int(self.render["resolution"])

    def lengthgen_flags(self, exp: str) -> dict:
        """The lengthgen flags of one experiment: the scale's, with the experiment's own replacing them."""
        return {**self.lengthgen, **self.lengthgen_by_experiment.get(exp, {})}


EXPERIMENTS = ("exp1", "exp2", "exp3")  # Table 1's location rows
FIGURE4 = ("fig4_global", "fig4_local")  # Figure 4's pair: the global and the patch-local model on 1 object


def scale_configs(folder: str, experiments: tuple[str, ...] = EXPERIMENTS) -> dict:
    return {exp: f"{folder}/{exp}.yaml" for exp in experiments}


# Issue 23: the training-free closed forms of the render's training split, with Exp 1's labels (all) and Exp 2's
# (single), evaluated as the trained models are; each trained model's r2 against those of its own labels.
CLOSED_FORMS = {f"cf_{kind}_{mode}": {"kind": kind, "label-mode": mode}
                for kind in ("local", "empirical") for mode in ("all", "single")}


SCALES: dict[str, Scale] = {
    "smoke": Scale(
        data="data/reproduce-smoke",
        render={"counts": "1-3", "per-count": 8, "val-per-count": 4, "resolution": 32, "samples-per-pixel": 4,
                "seed": 0},
        configs=scale_configs("configs/reproduce/smoke"),  # micro U-Nets, G = 8, 20 steps each
        lengthgen={"ks": "1-3", "samples-per-k": 2, "steps": 4, "samples-per-pixel": 4},
        locality={"sigmas": "0.5,40", "noise-draws": 1, "steps": 4, "locations": 3},
        note="tiny everything: the pipeline in minutes, no claim about results",
        closed_forms={name: {**CLOSED_FORMS[name], "grid-size": 8} for name in ("cf_local_single", "cf_empirical_all")},
        r2={"sigmas": "0.5,40", "heldout": 4}),
    "cpu": Scale(
        data="data/reproduce32",  # 10,000 images per count: minutes of Blender, and the judge ships (judge-32.pt)
        render={"counts": "1-3", "per-count": 10000, "val-per-count": 100, "resolution": 32, "samples-per-pixel": 16,
                "seed": 3},
        # tiny U-Nets at 32 px, G = 16 (2 px cells), bf16-mixed, 15000 steps; Figure 4's pair on n1 only
        configs=scale_configs("configs/reproduce/cpu", EXPERIMENTS + FIGURE4),
        lengthgen={"ks": "1-10", "samples-per-k": 32, "steps": 32, "samples-per-pixel": 16},
        # Figure 2 with its spread (issue 22): 8 scenes x 4 noise draws x every conditioner of each scene
        locality={"sigmas": DEFAULT_SIGMAS, "noise-draws": 4, "scenes": 8, "steps": 32, "locations": 3},
        note="32 px, G = 16, 1-3 objects: hours on 2 CPU cores",
        # full-image patch-local sampling runs the patch U-Net on all 256 patches per step (about 22x the global
        # net's work): 16 Heun steps, checked against 32 at k = 1..4 (STEPS_CHECK)
        # the study's budget on 2 cores (issue 22, measured 2026-12-03): a patch-local or local-machine sample takes
        # ~9 s of one core at 16 steps, so Figure 4's local model is judged on 16 samples per k, the closed forms
        # on 8 (their rows' intervals are wider: read them beside the counts in lengthgen.json)
        lengthgen_by_experiment={"exp3": {"steps": 16}, "fig4_local": {"steps": 16, "samples-per-k": 16},
                                 **{name: {"steps": 16, "samples-per-k": 8} for name in CLOSED_FORMS}},
        closed_forms=CLOSED_FORMS,
        closed_form_locality={"scenes": 1, "noise-draws": 2, "steps": 16},
        r2={"heldout": 32}),
    "paper": Scale(
        data="data/clevr64",
        render={"counts": "1-3", "per-count": 500000, "val-per-count": 1000, "resolution": 64, "samples-per-pixel": 64,
                "seed": 0},
        configs={exp: f"configs/{exp}.yaml" for exp in ("exp1", "exp2", "exp3")},  # edm2-img64-xs, G = 16
        lengthgen={"ks": "1-12", "samples-per-k": 32, "steps": 32, "samples-per-pixel": 64},
        locality={"sigmas": DEFAULT_SIGMAS, "noise-draws": 2, "steps": 32, "locations": 3},
        note="the paper's scale: 64 px, edm2-img64-xs, G = 16, for a GPU cluster",
        # the closed forms' cost grows with the training set: the first 30,000 renders of each count
        closed_forms={name: {**flags, "images-per-count": 30000} for name, flags in CLOSED_FORMS.items()},
        r2={"heldout": 64}),
}
STAGES = ("render", "fit", "export", "evaluate", "report")
RUN_VERSION = "run"  # the TensorBoardLogger version folder: a resumed fit writes into the same folder


def flags(options: dict) -> list[str]:
    """Command-line flags of a dict: `{"ks": "1-4"}` -> --ks 1-4; a value True is a bare switch (--no-oracle)."""
    return [item for name, value in options.items()
            for item in ((f"--{name}",) if value is True else (f"--{name}", str(value)))]


# The length-generalization evaluations of each experiment: folder -> lengthgen flags beside the scale's. Random
# k-subsets of the 12 locations are more crowded than the paper's prefixes (issue 22); an experiment sampled
# with fewer than the paper's 32 Heun steps is checked against 32 steps at k = 1..4 (issue 22: the fewer steps
# stand only where both agree within their intervals).
EVALUATIONS = {"lengthgen": {}, "lengthgen_random": {"order": "random"}}
STEPS_CHECK = ("lengthgen_steps32", {"ks": "1-4", "no-oracle": True})  # at the scale's own steps


# --- one invocation: paths, the command log, subprocesses -----------------------------------------------------


@dataclass
class Study:
    """What one `reproduce` invocation works on, and how it runs and records commands."""

    scale_name: str
    scale: Scale
    out: Path
    runs: Path
    data: Path
    experiments: list[str]
    judge: str | None
    dry_run: bool
    argv_base: list[str] = field(default_factory=list)  # the reproduce flags that name this study (for the log)
    parallel: int = 1  # commands at once (fits, evaluations), each pinned to its own cores (run_jobs)

    @property
    def trained(self) -> list[str]:
        """The chosen experiments that train (a fit config), in the order given."""
        return [exp for exp in self.experiments if exp in self.scale.configs]

    @property
    def closed_forms(self) -> list[str]:
        """The chosen closed forms (issue 23): built from the render, nothing to train."""
        return [name for name in self.experiments if name in self.scale.closed_forms]

    def spec(self, name: str) -> Path:
        return self.out / "closed_forms" / f"{name}.pt"

    def log_dir(self, exp: str) -> Path:
        return self.runs / exp / "lightning_logs" / RUN_VERSION

    def last_ckpt(self, exp: str) -> Path:
        return self.log_dir(exp) / "checkpoints" / "last.ckpt"

    def weights(self, exp: str) -> Path:
        return self.out / "weights" / f"{exp}.pt"

    def config(self, exp: str) -> Path:
        """The experiment's fit config: as written (relative to the working directory), else in the repository."""
        path = Path(self.scale.configs[exp])
        if not path.is_absolute() and not path.exists():
            in_repo = Path(lcsbench.__file__).resolve().parents[1] / path
            if in_repo.exists():
                return in_repo
        return path

    def say(self, text: str) -> None:
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
        # same cores, run many times slower (issue 22); unpinned, a user's own OMP_NUM_THREADS wins
        if cores:
            env["OMP_NUM_THREADS"] = str(threads)
        else:
            env.setdefault("OMP_NUM_THREADS", str(threads))
        package_root = str(Path(lcsbench.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        pin_to = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        process = subprocess.Popen([sys.executable, "-m", "lcsbench", *argv], env=env, preexec_fn=pin_to)
        process.started, process.what, process.line = time.perf_counter(), what, line
        return process

    def finish(self, process: subprocess.Popen | None) -> float:
        """Wait for a started command; its seconds (recorded in timings.json), or the error naming it."""
        if process is None:
            return 0.0
        code = process.wait()
        seconds = time.perf_counter() - process.started
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
        """Keep the seconds of each step in OUT/timings.json (the report reads them)."""
        path = self.out / "timings.json"
        timings = read_json(path) or {}
        timings[what] = {"seconds": round(seconds, 1),
                         "finished": datetime.datetime.now().isoformat(timespec="seconds")}
        write_atomic(path, json.dumps(timings, indent=2))


LOCK_NAME = ".reproduce.lock"


@contextlib.contextmanager
def study_lock(*folders: Path):
    """Hold an exclusive lock on each folder (its LOCK_NAME file, with this process's pid) for the duration, so
    that two `reproduce` runs never train or write into one study at once; a held lock is refused with its
    holder's pid. The operating system drops the lock when the holder dies, so a crash leaves nothing to clean."""
    import fcntl

    handles = []
    try:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 - held until the study ends
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise SystemExit(f"reproduce: another reproduce (pid {holder}) is working on {folder} "
                                 f"({folder / LOCK_NAME}): wait for it to end, or stop it, then rerun this "
                                 f"command; two studies at once would train into the same runs") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            handles.append(handle)
        yield
    finally:
        for handle in handles:
            handle.close()


def refuse(study: Study, text: str) -> None:
    """A missing input: in a dry run a note (an earlier stage of the same run may make it), else the error."""
    if study.dry_run:
        print(f"# (would need: {text})", flush=True)
        return
    raise SystemExit(f"reproduce: {text}")


# --- stage: render ----------------------------------------------------------------------------------------------


def render_is_complete(root: Path, render: dict) -> bool:
    """Every shard the manifest lists is on disk, and the manifest's settings are the scale's render arguments."""
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        return False
    from lcsbench.data.scenes import parse_counts
    from lcsbench.data.shards import ShardError, load_manifest

    try:  # the one manifest reader: refuses shard paths outside the root and malformed files
        manifest = load_manifest(root)
    except ShardError as error:
        raise SystemExit(f"reproduce: render: {error}") from None
    settings = manifest.get("settings", {})
    wanted = {"counts": list(parse_counts(str(render["counts"]))), "per_count": render["per-count"],
              "val_per_count": render["val-per-count"], "resolution": render["resolution"],
              "samples": render["samples-per-pixel"], "seed": render["seed"]}
    if any(settings.get(key) != value for key, value in wanted.items()):
        return False
    return all((root / shard).exists() for shard in manifest.get("shard_samples", {}))


def stage_render(study: Study) -> None:
    if render_is_complete(study.data, study.scale.render):
        study.say(f"render: {study.data} is complete, skipped")
        return
    study.run(["render", "--out", str(study.data), *flags(study.scale.render)], f"render {study.data}")


# --- stage: fit -------------------------------------------------------------------------------------------------


def read_config(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise SystemExit(f"reproduce: the fit config {path} does not exist: the scale's configs live in "
                         f"{path.parent}/ (exp1.yaml, exp2.yaml, exp3.yaml); write them, or choose another --scale")
    config = yaml.safe_load(path.read_text()) or {}
    try:
        max_steps = int(config["trainer"]["max_steps"])
        root = str(config["data"]["init_args"]["root"])
    except (KeyError, TypeError, ValueError):
        raise SystemExit(f"reproduce: {path} must set trainer.max_steps and data.init_args.root (as "
                         f"configs/exp1.yaml does)") from None
    return {"max_steps": max_steps, "data_root": root, "config": config}


def fit_arguments(study: Study, exp: str, config: dict, resume: bool) -> list[str]:
    """The `fit` command of one experiment: its config, a fixed log folder, the data root, the resume checkpoint."""
    argv = ["fit", "--config", str(study.config(exp)),
            "--trainer.logger.init_args.save_dir", str(study.runs / exp),
            "--trainer.logger.init_args.version", RUN_VERSION]
    if Path(config["data_root"]).resolve() != study.data.resolve():
        argv += ["--data.init_args.root", str(study.data)]
    if resume:
        argv += ["--ckpt_path", str(study.last_ckpt(exp))]
    return argv


def core_slots(parallel: int) -> list[list[int]]:
    """The usable cores split into `parallel` disjoint groups, one per concurrent command."""
    cores = usable_core_ids()
    if parallel > len(cores):
        raise SystemExit(f"reproduce: --parallel {parallel} needs at least {parallel} cores, this process may "
                         f"use {len(cores)}: pass --parallel {len(cores)} or fewer")
    return [cores[i::parallel] for i in range(parallel)]


def check_fit_finished(study: Study, exp: str, max_steps: int) -> None:
    from lcsbench.checkpoints import checkpoint_step

    last = study.last_ckpt(exp)
    step = checkpoint_step(last) if last.exists() else None
    if step is None or step < max_steps:
        raise SystemExit(f"reproduce: fit {exp} ended without a last.ckpt at max_steps {max_steps} "
                         f"({last}: {'missing' if step is None else f'step {step}'}): the config's "
                         f"ModelCheckpoint needs save_last: true and every_n_train_steps dividing max_steps")


@dataclass
class Job:
    """One `python -m lcsbench ...` command of a stage, with what to do just before and after it runs."""

    argv: list[str]
    what: str
    before: Callable[[], None] | None = None  # run just before the command starts (e.g. copy shared oracle renders)
    after: Callable[[], None] | None = None  # run when it ended well (e.g. check the fit, stamp the evaluation)
    beside: bool = False  # a check beside the table's rows (random k-subsets, the steps check): run last


def run_jobs(study: Study, jobs: list[Job]) -> None:
    """Run a stage's commands: one after another on every core, or with --parallel N, N at a time, each pinned to
    its own cores with that many threads (never two on one core: issue 22 measured 26x slower fits beside another
    job with default threads). A failure lets the running commands finish, starts no new one, then is raised."""
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


def stage_fit(study: Study) -> None:
    """Train the experiments whose last.ckpt is short of max_steps (run_jobs: one after another on every core, or
    --parallel N at once on their own cores)."""
    from lcsbench.checkpoints import checkpoint_step

    if not (study.data / "manifest.json").exists():
        refuse(study, f"the training data {study.data} is missing: run `--stage render` first (or pass --data)")
    jobs = []
    for exp in study.trained:
        config = read_config(study.config(exp))
        last = study.last_ckpt(exp)
        step = checkpoint_step(last) if last.exists() else None
        if step is not None and step >= config["max_steps"]:
            study.say(f"fit {exp}: {last} holds step {step} of {config['max_steps']}, skipped")
            continue
        if step is not None:
            study.say(f"fit {exp}: resuming from step {step} of {config['max_steps']}")
        jobs.append(Job(fit_arguments(study, exp, config, resume=step is not None), f"fit {exp}",
                        after=lambda exp=exp, steps=config["max_steps"]: check_fit_finished(study, exp, steps)))
    run_jobs(study, jobs)


# --- stage: export ----------------------------------------------------------------------------------------------


def training_wall_seconds(log_dir: Path) -> float | None:
    """Seconds of training in a run folder: per TensorBoard event file (one per start or resume), the time from
    its first to its last event, summed; None without event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total, found = 0.0, False
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        times = [event.wall_time for event in EventFileLoader(str(path)).Load()]
        if times:
            total += max(times) - min(times)
            found = True
    return round(total, 1) if found else None


CURVE_TAGS = ("cond_gap/gap@", "lengthgen/success@", "lengthgen/k_max", "val/loss")  # the learning curves


def read_scalars(log_dir: Path, prefixes: tuple[str, ...] = CURVE_TAGS) -> dict[str, dict[int, float]]:
    """The TensorBoard scalars of a run folder whose tags start with a prefix: tag -> step -> value (the last
    write of a step wins, so a resumed run's repeated steps count once)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    series: dict[str, dict[int, float]] = {}
    for tag in events.Tags()["scalars"]:
        if tag.startswith(prefixes):
            series[tag] = {event.step: float(event.value) for event in events.Scalars(tag)}
    return series


def write_curves(log_dir: Path, folder: Path, title: str) -> None:
    """OUT/<exp>/curves.csv (step, tag, value) and curves.png: the conditioning gap, the length-generalization
    curve and the validation loss over training, from the run's TensorBoard events (issue 22)."""
    from lcsbench.analysis import report as rp
    from lcsbench.analysis.plots import save_figure

    series = read_scalars(log_dir)
    if not series:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["step,tag,value"] + [f"{step},{tag},{value:.6g}" for tag, values in sorted(series.items())
                                 for step, value in sorted(values.items())]
    (folder / "curves.csv").write_text("\n".join(rows) + "\n")
    save_figure(rp.learning_curves_figure(series, title), folder / "curves.png")


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


def write_atomic(path: Path, text: str) -> None:
    """Write a study file whole or not at all (a temporary file, then a rename): a crash leaves the old one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def weights_match_record(weights: Path, sidecar: dict | None) -> bool | None:
    """Whether the weights file is the one its export recorded (sha256); None when no hash was recorded."""
    from lcsbench.data.shards import file_sha256

    if sidecar is None or "sha256" not in sidecar:
        return None
    return weights.exists() and file_sha256(weights) == sidecar["sha256"]


def experiment_title(exp: str) -> str:
    from lcsbench.analysis.report import EXPERIMENT_NAMES

    return EXPERIMENT_NAMES.get(exp, exp)


def stage_export(study: Study) -> None:
    for exp in study.trained:
        last, weights = study.last_ckpt(exp), study.weights(exp)
        sidecar = read_json(weights.with_suffix(".json"))
        intact = weights_match_record(weights, sidecar) is not False
        if weights.exists() and sidecar is not None and intact and (
                not last.exists() or sidecar.get("source_mtime") == last.stat().st_mtime):
            study.say(f"export {exp}: {weights} is the current export, skipped")
            continue
        if weights.exists() and not intact:
            study.say(f"export {exp}: {weights} does not match the sha256 its export recorded: exporting again")
        if not last.exists():  # in a dry run a note: the fit stage of the same run may write it
            refuse(study, f"export {exp}: no trained run at {last}: run `--stage fit` first (or pass the --runs "
                          f"folder the fit stage wrote)")
        study.in_process("export", exp, f"export {exp}: EMA weights of {last} -> {weights}")
        if study.dry_run:
            continue
        from lcsbench.models.edm2 import export_ema_weights

        config = read_config(study.config(exp))
        run_config = study.log_dir(exp) / "config.yaml"
        import yaml

        metadata = {
            "scale": study.scale_name, "experiment": exp, "config_file": str(study.config(exp)),
            "config": yaml.safe_load(run_config.read_text()) if run_config.exists() else config["config"],
            "max_steps": config["max_steps"], "wall_seconds": training_wall_seconds(study.log_dir(exp)),
            "source_mtime": last.stat().st_mtime,
            "exported": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        started = time.perf_counter()
        try:
            recorded = export_ema_weights(last, weights, metadata)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"reproduce: export {exp}: {error}") from None
        from lcsbench.data.shards import file_sha256

        recorded["sha256"] = file_sha256(weights)
        write_atomic(weights.with_suffix(".json"), json.dumps(recorded, indent=2, default=str))
        write_curves(study.log_dir(exp), study.out / exp, experiment_title(exp))
        study.timing(f"export {exp}", time.perf_counter() - started)
        if recorded["step"] < config["max_steps"]:
            study.say(f"export {exp}: note: the run is at step {recorded['step']} of {config['max_steps']}")
        study.say(f"export {exp}: wrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB, step "
                  f"{recorded['step']}, {recorded['parameters']} weights)")
    for name in study.closed_forms:
        write_closed_form_spec(study, name)


def spec_record(path: Path) -> dict | None:
    """The closed-form entry of a spec file, or None when it is missing or unreadable."""
    if not path.exists():
        return None
    from lcsbench.checkpoints import read_checkpoint
    from lcsbench.models.closed_form import CLOSED_FORM_KEY

    try:
        return read_checkpoint(path, "").get(CLOSED_FORM_KEY)
    except (FileNotFoundError, ValueError):
        return None


def write_closed_form_spec(study: Study, name: str) -> None:
    """OUT/closed_forms/<name>.pt, the closed form's spec over the study's render (issue 23), unless the one there
    names this render as it is now (path and manifest sha256)."""
    from lcsbench.data.shards import file_sha256

    spec, manifest = study.spec(name), study.data / "manifest.json"
    entry = spec_record(spec)
    if (entry is not None and manifest.exists() and entry.get("render") == str(study.data.resolve())
            and entry.get("manifest_sha256") == file_sha256(manifest)):
        study.say(f"closed form {name}: {spec} names the current render, skipped")
        return
    study.run(["closed-form", "spec", "--render", str(study.data), "--out", str(spec), "--counts",
               str(study.scale.render["counts"]), *flags(study.scale.closed_forms[name])], f"closed form {name}")


# --- stage: evaluate --------------------------------------------------------------------------------------------


def judge_arguments(study: Study) -> list[str]:
    """--judge for lengthgen, or none when the judge shipped for the scale's resolution is to be used."""
    if study.judge is not None:
        return ["--judge", study.judge]
    from lcsbench.models.judge import shipped_judges

    if study.scale.resolution not in shipped_judges():
        from lcsbench.models.judge import JUDGE_RECIPE

        refuse(study, f"a judge: none ships for {study.scale.resolution}x{study.scale.resolution} images: pass "
                      f"--judge PATH, or {JUDGE_RECIPE.format(r=study.scale.resolution)}")
    return []


def evaluation_is_current(folder: Path, result: str, export: dict | None) -> bool:
    """The evaluation in `folder` exists and was made from the current export (its stamp names the export and
    the weights' sha256; for r2 also the closed forms' specs)."""
    stamp = read_json(folder / "evaluated.json")
    if not (folder / result).exists():
        return False
    if stamp is None or export is None:
        return True
    return all(stamp.get(key) == export.get(key) for key in ("exported", "sha256", "specs") if key in export)


def stamp(folder: Path, weights: Path, export: dict | None) -> None:
    export = export or {}
    write_atomic(folder / "evaluated.json", json.dumps(
        {"weights": str(weights), "exported": export.get("exported"), "step": export.get("step"),
         "sha256": export.get("sha256"), **({"specs": export["specs"]} if "specs" in export else {})}, indent=2))


def evaluations(study: Study, exp: str) -> dict[str, dict]:
    """The lengthgen runs of one experiment: OUT/<exp>/<folder> -> its full flags (EVALUATIONS, STEPS_CHECK); a
    closed form is judged in the paper's order only (its sampling is the study's slowest)."""
    base = study.scale.lengthgen_flags(exp)
    if exp in study.scale.closed_forms:
        return {"lengthgen": base}
    runs = {folder: {**base, **extra} for folder, extra in EVALUATIONS.items()}
    scale_steps = int(study.scale.lengthgen.get("steps", 32))
    if int(base.get("steps", scale_steps)) < scale_steps:  # this experiment samples with fewer steps
        folder, extra = STEPS_CHECK
        runs[folder] = {key: value for key, value in {**base, **extra, "steps": scale_steps}.items()
                        if key != "samples-per-pixel"}
    return runs


def same_requests(one: dict, other: dict) -> bool:
    """Whether two lengthgen runs ask the oracle for the same renders: the same flags but for the model's sampler
    steps (the oracle renders the requests; it does not sample)."""
    return {k: v for k, v in one.items() if k != "steps"} == {k: v for k, v in other.items() if k != "steps"}


def share_oracle(study: Study, exp: str, folder: Path, options: dict) -> None:
    """Copy the oracle renders another experiment's lengthgen made of the same requests (same flags)."""
    if (folder / "oracle_render").exists() or options.get("no-oracle"):
        return
    for other in (*study.scale.configs, *study.scale.closed_forms):
        for other_folder, other_options in evaluations(study, other).items() if other != exp else ():
            source = study.out / other / other_folder / "oracle_render"
            if (same_requests(other_options, options) and (source.parent / "lengthgen.json").exists()
                    and (source / "manifest.json").exists()):
                line = ["cp", "-r", str(source), str(folder / "oracle_render")]
                if study.dry_run:
                    print(shlex.join(line), flush=True)
                    return
                study.say(f"{folder.name} {exp}: reusing the oracle renders of {other}")
                study.record(line, f"{folder.name} {exp}: the oracle renders of {other}")
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copytree(source, folder / "oracle_render")
                return


def stage_evaluate(study: Study) -> None:
    """Judge every trained model's exported weights and every closed form (run_jobs: one after another on every
    core, or --parallel N at once on their own cores)."""
    jobs: list[Job] = []
    for exp in study.trained:
        weights = study.weights(exp)
        if not weights.exists():
            refuse(study, f"evaluate {exp}: no weights at {weights}: run `--stage fit` and `--stage export` "
                          f"first (export writes OUT/weights/<exp>.pt from the fit stage's run)")
        export = read_json(weights.with_suffix(".json"))
        if not study.dry_run and weights_match_record(weights, export) is False:
            raise SystemExit(f"reproduce: evaluate {exp}: {weights} does not match the sha256 its export recorded in "
                             f"{weights.with_suffix('.json')}: the file was replaced or damaged. Rerun `--stage "
                             f"export` (from the run folder) or restore the exported file")
        jobs += denoiser_jobs(study, exp, weights, export, study.scale.locality)
        jobs += r2_jobs(study, exp, weights, export)
    for name in study.closed_forms:
        spec = study.spec(name)
        if not spec.exists():
            refuse(study, f"evaluate {name}: no closed-form spec at {spec}: run `--stage export` first (it writes "
                          f"the specs of the closed forms from the render)")
        record = {"exported": None, "sha256": spec_sha256(spec)}
        jobs += denoiser_jobs(study, name, spec, record, {**study.scale.locality, **study.scale.closed_form_locality})
    # the rows of the table first, the checks beside them last: a study stopped early reports what it has
    run_jobs(study, [job for job in jobs if not job.beside] + [job for job in jobs if job.beside])


def spec_sha256(spec: Path) -> str | None:
    from lcsbench.data.shards import file_sha256

    return file_sha256(spec) if spec.exists() else None


def denoiser_jobs(study: Study, exp: str, source: Path, record: dict | None, locality_flags: dict) -> list[Job]:
    """The lengthgen runs and the locality maps of one trained model's weights or one closed form's spec that are
    not current yet."""
    jobs = []
    for name, options in evaluations(study, exp).items():
        folder = study.out / exp / name
        if evaluation_is_current(folder, "lengthgen.json", record):
            study.say(f"{name} {exp}: {folder / 'lengthgen.json'} exists, skipped")
            continue
        jobs.append(Job(["lengthgen", "--ckpt", str(source), "--out", str(folder), "--name", exp,
                         *judge_arguments(study), *flags(options)], f"{name} {exp}",
                        before=lambda folder=folder, options=options: share_oracle(study, exp, folder, options),
                        after=lambda folder=folder: stamp(folder, source, record), beside=name != "lengthgen"))
    locality = study.out / exp / "locality"
    if evaluation_is_current(locality, "locality_maps.npz", record):
        study.say(f"locality {exp}: {locality / 'locality.json'} exists, skipped")
    else:
        jobs.append(Job(["locality", "--ckpt", str(source), "--out", str(locality), *flags(locality_flags)],
                        f"locality {exp}", after=lambda: stamp(locality, source, record)))
    return jobs


def r2_specs(study: Study, exp: str) -> list[str]:
    """The closed forms a trained model is measured against: those written for the study whose labels and object
    counts are the model's training data's (Exp 1: the `all` pair; Exp 2, Exp 3: the `single` pair)."""
    from lcsbench.data.scenes import parse_counts

    data = read_config(study.config(exp))["config"].get("data", {}).get("init_args", {})
    mode, counts = data.get("label_mode", "all"), parse_counts(str(data.get("counts", "1-3")))
    same_counts = parse_counts(str(study.scale.render["counts"])) == counts
    return [name for name, options in study.scale.closed_forms.items()
            if same_counts and options["label-mode"] == mode and (study.dry_run or study.spec(name).exists())]


def r2_jobs(study: Study, exp: str, weights: Path, export: dict | None) -> list[Job]:
    """OUT/<exp>/r2: the model's D against its closed forms' per noise level (issue 23, item 3), unless current."""
    names = r2_specs(study, exp)
    if not names:
        return []
    folder = study.out / exp / "r2"
    record = {**(export or {}), "specs": {name: spec_sha256(study.spec(name)) for name in names}}
    if evaluation_is_current(folder, "r2.json", record):
        study.say(f"r2 {exp}: {folder / 'r2.json'} exists, skipped")
        return []
    specs = [item for name in names for item in ("--spec", str(study.spec(name)))]
    return [Job(["closed-form", "r2", "--ckpt", str(weights), *specs, "--out", str(folder), *flags(study.scale.r2)],
                f"r2 {exp}", after=lambda: stamp(folder, weights, record))]


# --- stage: report ----------------------------------------------------------------------------------------------


def machine() -> dict:
    """Where the report was made: platform, cores, torch, GPU, lcsbench version and commit."""
    import torch

    try:
        commit = subprocess.run(["git", "-C", str(Path(lcsbench.__file__).resolve().parents[1]), "rev-parse",
                                 "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "lcsbench": lcsbench.__version__, "commit": commit}


# the report is written without them (older studies; a closed form has no export, random order or steps check;
# a study stopped early may lack a locality run: its rows stand, Figure 2 shows what was measured)
OPTIONAL_INPUTS = ("export", "random", "steps32", "r2", "locality", "maps")


def report_inputs(study: Study) -> dict[str, dict[str, Path]]:
    """Per experiment and closed form, the evaluation files the report reads."""
    inputs = {exp: {"lengthgen": study.out / exp / "lengthgen" / "lengthgen.json",
                    "random": study.out / exp / "lengthgen_random" / "lengthgen.json",
                    "steps32": study.out / exp / STEPS_CHECK[0] / "lengthgen.json",
                    "locality": study.out / exp / "locality" / "locality.json",
                    "maps": study.out / exp / "locality" / "locality_maps.npz",
                    "export": study.weights(exp).with_suffix(".json"),
                    "r2": study.out / exp / "r2" / "r2.json"} for exp in study.trained}
    return inputs | {name: {"lengthgen": study.out / name / "lengthgen" / "lengthgen.json",
                            "locality": study.out / name / "locality" / "locality.json",
                            "maps": study.out / name / "locality" / "locality_maps.npz"}
                     for name in study.closed_forms}


def stage_report(study: Study) -> None:
    inputs = report_inputs(study)
    missing = [str(p) for files in inputs.values() for key, p in files.items()
               if key not in OPTIONAL_INPUTS and not p.exists()]
    if missing:
        refuse(study, f"report: {len(missing)} evaluation output(s) missing, e.g. {missing[0]}: run `--stage "
                      f"evaluate` first")
        if study.dry_run:
            study.in_process("report", None, "report")
        return
    report_path = study.out / "report.json"
    newest = max(p.stat().st_mtime for files in inputs.values() for p in files.values() if p.exists())
    if (read_json(report_path) is not None and report_path.stat().st_mtime >= newest
            and (study.out / "table.md").exists()):
        study.say(f"report: {report_path} is newer than its inputs, skipped")
        return
    study.in_process("report", None, f"report: {study.out / 'table.md'}, report.json and figures")
    if study.dry_run:
        return
    write_report(study, inputs)


def write_report(study: Study, inputs: dict[str, dict[str, Path]]) -> None:
    import numpy as np
    from PIL import Image

    from lcsbench.analysis import report as rp
    from lcsbench.analysis.plots import save_figure

    lengthgens = {exp: read_json(files["lengthgen"]) for exp, files in inputs.items()}
    localities = {exp: locality for exp, files in inputs.items()  # read_json: None when missing or unreadable
                  if (locality := read_json(files["locality"])) is not None}
    trained = [exp for exp in inputs if exp in study.scale.configs]
    closed_names = [name for name in inputs if name in study.scale.closed_forms]
    randoms = {exp: read_json(inputs[exp]["random"]) for exp in trained if inputs[exp]["random"].exists()}
    steps32 = {exp: read_json(inputs[exp]["steps32"]) for exp in trained if inputs[exp]["steps32"].exists()}
    exports = {exp: read_json(inputs[exp]["export"]) for exp in trained}
    r2s = {exp: read_json(inputs[exp]["r2"]) for exp in trained if inputs[exp]["r2"].exists()}
    r2s = {exp: r2 for exp, r2 in r2s.items() if r2 is not None}
    timings = read_json(study.out / "timings.json") or {}
    experiments = {}
    for exp in trained:
        summary = rp.experiment_summary(lengthgens[exp], localities.get(exp), randoms.get(exp))
        if exp in steps32:
            summary["steps_check"] = rp.steps_agreement(lengthgens[exp], steps32[exp])
        export = exports[exp] or {}
        summary |= {"weights": str(study.weights(exp)), "paper": rp.PAPER_TABLE1.get(exp),
                    "name": rp.EXPERIMENT_NAMES.get(exp, exp), "steps": export.get("step"),
                    "max_steps": export.get("max_steps"), "wall_seconds": export.get("wall_seconds"),
                    "parameters": export.get("parameters"), "config_file": export.get("config_file"),
                    "config": export.get("config"), "lengthgen_protocol": lengthgens[exp]["protocol"],
                    "lengthgen_rows": lengthgens[exp]["rows"], "locality_json": localities.get(exp)}  # every number
        experiments[exp] = summary
    closed = rp.closed_form_summary(
        {name: rp.experiment_summary(lengthgens[name], localities.get(name)) | {
            "spec": str(study.spec(name)), "lengthgen_protocol": lengthgens[name]["protocol"],
            "lengthgen_rows": lengthgens[name]["rows"]} for name in closed_names},
        {name: study.scale.closed_forms[name] for name in closed_names})
    predictions = rp.closed_form_predictions(closed, r2s) if closed_names else []
    goals = rp.goal_checks(experiments, localities, timings)
    oracles = {exp: rp.oracle_summary(lengthgens[exp]) for exp in inputs}
    first_oracle = next((o for o in oracles.values() if o is not None), None)
    links, grids = {}, {}
    for exp in inputs:
        folder = inputs[exp]["lengthgen"].parent
        ks = [int(k) for k in lengthgens[exp]["rows"]["model"]["per_k"]]
        found = {k: folder / f"samples_k{k}.png" for k in ks if (folder / f"samples_k{k}.png").exists()}
        links[exp] = {k: str(p.relative_to(study.out)) for k, p in found.items()}
        if exp in trained:
            grids[exp] = {k: np.asarray(Image.open(p).convert("RGB")) for k, p in found.items()}
    figures = {}
    measured = [e for e in trained if e in localities and inputs[e]["maps"].exists()]
    if trained:
        figures["success_vs_k"] = rp.success_figure({e: lengthgens[e] for e in trained}, randoms)
    if measured:
        figures |= {"locality_radius": rp.locality_radius_figure({e: localities[e] for e in measured}),
                    "locality_maps": rp.locality_maps_figure(
                        {e: dict(np.load(inputs[e]["maps"], allow_pickle=False)) for e in measured})}
    if any(grids.values()):
        figures["samples_by_k"] = rp.sample_grid_figure({exp: g for exp, g in grids.items() if g})
    if closed_names:
        figures["closed_forms"] = rp.success_figure({n: lengthgens[n] for n in closed_names},
                                                    title="Closed forms: length generalization (issue 23)")
    closed_localities = {n: localities[n] for n in closed_names if n in localities}
    if closed_localities:
        figures["closed_forms_locality_radius"] = rp.locality_radius_figure(closed_localities)
    if r2s:
        figures["r2"] = rp.r2_figure(r2s)
    for name, figure in figures.items():
        save_figure(figure, study.out / f"{name}.png")
    table = rp.table_markdown(study.scale_name, {e: lengthgens[e] for e in trained}, goals, links, randoms) \
        if trained else f"# Reproduction (scale `{study.scale_name}`)\n"
    if closed_names:
        table += rp.closed_form_markdown(closed, r2s, predictions)
    write_atomic(study.out / "table.md", table)
    document = {
        "scale": study.scale_name, "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "paper_table1": rp.PAPER_TABLE1, "experiments": experiments,
        "closed_form": closed, "r2": r2s, "closed_form_predictions": predictions,
        "oracle": {**(first_oracle or {}), "per_experiment": oracles},
        "goals": goals, "render": {"data": str(study.data), **study.scale.render},
        "evaluation": {"lengthgen": {exp: evaluations(study, exp)
                                     for exp in (*study.scale.configs, *study.scale.closed_forms)},
                       "locality": study.scale.locality, "closed_form_locality": study.scale.closed_form_locality,
                       "closed_forms": study.scale.closed_forms, "r2": study.scale.r2},
        "timings": timings, "machine": machine(), "commands": "commands.sh",
        "figures": [f"{name}.png" for name in figures], "sample_grids": links,
    }
    write_atomic(study.out / "report.json", json.dumps(document, indent=2, default=str))
    for exp, summary in experiments.items():
        study.say(f"{exp}: k_max {summary['k_max_notation']} (strict {summary['k_max_strict']}), paper "
                  f"{summary['paper']}")
    for mode, kinds in closed.items():
        for kind, summary in kinds.items():
            study.say(f"closed form {kind}, {mode} labels: k_max {summary['k_max_notation']}")
    for goal in goals:
        study.say(f"goal {rp.verdict(goal['passed']):7s} {goal['goal']}")
    for prediction in predictions:
        study.say(f"closed forms {rp.verdict(prediction['passed']):7s} {prediction['prediction']}")
    study.say(f"wrote {study.out / 'table.md'}, report.json and {len(figures)} figures")


# --- the command ------------------------------------------------------------------------------------------------

STAGE_FUNCTIONS = {"render": stage_render, "fit": stage_fit, "export": stage_export, "evaluate": stage_evaluate,
                   "report": stage_report}


def build_parser() -> CommandParser:
    scales = "; ".join(f"{name}: {scale.note}" for name, scale in SCALES.items())
    parser = command_parser("reproduce", __doc__)
    parser.add_argument("--scale", required=True, choices=list(SCALES), help=scales)
    parser.add_argument("--out", required=True, metavar="DIR", help="report folder, e.g. reports/reproduction/<scale>")
    parser.add_argument("--runs", default=None, help="training runs (default: runs/reproduction/<scale>)")
    parser.add_argument("--data", default=None, help="the rendered dataset (default: the scale's, e.g. "
                                                     "data/reproduce32 for cpu)")
    parser.add_argument("--stage", choices=(*STAGES, "all"), default="all", help="run one stage, or all")
    parser.add_argument("--experiments", default=None, help="comma list of the scale's experiments, e.g. exp1,exp2 "
                                                            "(default: all)")
    parser.add_argument("--judge", default=None, help="judge checkpoint for lengthgen (default: the judge shipped "
                                                      "for the scale's resolution)")
    parser.add_argument("--parallel", type=int, default=1,
                        help="commands at once (fits, evaluations), each pinned to its own share of the cores with "
                             "as many threads (default 1: one after another on every core). Small models gain: two "
                             "tiny 32 px fits on one core each made 1.36x the steps of one fit on both cores "
                             "(issue 22)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.deprecated_aliases({"--parallel-fits": "--parallel"})
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    scale = SCALES[args.scale]
    known = [*scale.configs, *scale.closed_forms]  # trained models, then the closed forms (issue 23)
    experiments = known if args.experiments is None else \
        [e.strip() for e in args.experiments.split(",") if e.strip()]
    unknown = [e for e in experiments if e not in known]
    if unknown or not experiments:
        raise SystemExit(f"reproduce: --experiments takes a comma list among {','.join(known)}; found "
                         f"{args.experiments!r}")
    if args.judge is not None and not Path(args.judge).is_file():
        raise SystemExit(f"reproduce: --judge {args.judge} does not exist: pass a judge checkpoint from "
                         f"`python -m lcsbench fit --config configs/judge.yaml` (runs/judge/.../last.ckpt), or leave "
                         f"--judge out to use the judge shipped for the scale's resolution")
    from lcsbench.commands._common import check_output_dir

    for flag, folder in (("--out", args.out), ("--runs", args.runs)):
        if folder is not None:
            check_output_dir(folder, flag)  # a file or an unwritable folder is refused before any stage runs
    runs = Path(args.runs or f"runs/reproduction/{args.scale}")
    data = Path(args.data or scale.data)
    base = ["--scale", args.scale, "--out", args.out, "--runs", str(runs), "--data", str(data)]
    if args.judge:
        base += ["--judge", args.judge]
    if args.parallel < 1:
        raise SystemExit(f"reproduce: --parallel is a number of commands at once (1 or more), got {args.parallel}")
    study = Study(args.scale, scale, Path(args.out), runs, data, experiments, args.judge, args.dry_run, base,
                  args.parallel)
    stages = STAGES if args.stage == "all" else (args.stage,)
    with contextlib.nullcontext() if args.dry_run else study_lock(study.out, study.runs):
        for stage in stages:
            study.say(f"stage {stage}" + (" (dry run: commands only)" if args.dry_run else ""))
            STAGE_FUNCTIONS[stage](study)
    if not args.dry_run and "report" in stages:
        study.say(f"done: {study.out / 'table.md'}")
    return 0
