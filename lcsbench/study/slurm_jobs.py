"""`reproduce --slurm`: the study's parts (the render, each fit with its export, each closed form's spec, each
model's evaluations, the report) as SLURM jobs with afterok dependencies, their ids kept in OUT/slurm_jobs.json so
that a later call resumes."""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lcsbench.study.export import spec_is_current
from lcsbench.study.runner import Study
from lcsbench.study.stages import needed_renders, render_is_complete

SLURM_JOBS = "slurm_jobs.json"  # OUT/slurm_jobs.json: each part's job id, so that a later call resumes
SLURM_SCRIPT = "scripts/slurm_command.sh"  # in the repository: runs one study command in a job


@dataclass
class SlurmOptions:
    """What a user sets on a real cluster (flags of reproduce --slurm), passed to every job's sbatch."""

    partition: str | None = None
    time: str = "48:00:00"
    cpus_per_task: int = 1
    gpus_per_node: int | None = None
    extra: list[str] = field(default_factory=list)  # --sbatch-args, split as a shell would
    wait: bool = True

    def sbatch(self) -> list[str]:
        options = ["--ntasks", "1", "--cpus-per-task", str(self.cpus_per_task), "--time", self.time]
        if self.partition:
            options += ["--partition", self.partition]
        if self.gpus_per_node is not None:
            options += [f"--gpus-per-node={self.gpus_per_node}"]
        return options + self.extra


@dataclass
class Part:
    """One SLURM job of the study: the stages its `reproduce` line runs, for which experiments (None: the
    study's), the parts it waits for (afterok) and whether the study's own outputs say it is done."""

    name: str  # "render", "fit exp1", "spec cf_local_single", "evaluate exp1", "report"
    stages: tuple[str, ...]
    experiments: list[str] | None
    after: list[str]
    done: Callable[[], bool]


def quietly_done(check: Callable[[], bool]) -> Callable[[], bool]:
    """A done-check that counts a refusal (a missing input) as not done."""
    def done() -> bool:
        try:
            return bool(check())
        except SystemExit:
            return False
    return done


def fit_done(study: Study, exp: str) -> bool:
    from lcsbench.checkpoints import checkpoint_step
    from lcsbench.study.export import export_is_current

    last = study.last_ckpt(exp)
    step = checkpoint_step(last) if last.exists() else None
    return step is not None and step >= study.config(exp)["max_steps"] and export_is_current(study, exp)


def evaluate_done(study: Study, name: str) -> bool:
    """No evaluation command of the experiment is left to run (the evaluate stage's own tests)."""
    from lcsbench.study.evaluate import closed_form_jobs, trained_jobs

    if study.record_of(name).trained:
        return study.weights(name).exists() and not trained_jobs(study, name)
    return study.spec(name).exists() and not closed_form_jobs(study, name)


def report_done(study: Study) -> bool:
    """Every input the report needs is there and the report is newer than them (the report stage's test)."""
    from lcsbench.study.report import OPTIONAL_INPUTS, report_inputs, report_is_current, reported_experiments

    inputs = report_inputs(study, reported_experiments(study))
    needed = all(p.exists() for files in inputs.values() for key, p in files.items() if key not in OPTIONAL_INPUTS)
    return needed and report_is_current(study, inputs)


def slurm_parts(study: Study) -> list[Part]:
    """The study's jobs in the local runner's order: the render; per trained model its fit and export; per closed
    form its spec; per model and judged closed form its evaluations after its fit (and the specs, for r2); the report
    after everything."""
    quiet = dataclasses.replace(study, quiet=True)
    parts = [Part("render", ("render",), None, [], quietly_done(lambda: all(
        render_is_complete(study.render_root(key), {k: v for k, v in study.scale.renders[key].items() if k != "root"})
        for key in needed_renders(study))))]
    for exp in study.trained:
        parts.append(Part(f"fit {exp}", ("fit", "export"), [exp], ["render"],
                          quietly_done(lambda exp=exp: fit_done(quiet, exp))))
    specs = [f"spec {name}" for name in study.closed_forms]
    for name in study.closed_forms:
        parts.append(Part(f"spec {name}", ("export",), [name], ["render"],
                          quietly_done(lambda name=name: spec_is_current(quiet, name))))
    for name in study.experiments:
        if study.record_of(name).trained or study.record_of(name).judged:
            after = [f"fit {name}", *specs] if study.record_of(name).trained else [f"spec {name}"]  # r2: the specs
            parts.append(Part(f"evaluate {name}", ("evaluate",), [name], after,
                              quietly_done(lambda name=name: evaluate_done(quiet, name))))
    everything = [part.name for part in parts]
    parts.append(Part("report", ("report",), study.experiments if study.chosen else None, everything,
                      quietly_done(lambda: report_done(quiet))))
    return parts


def job_line(study: Study, part: Part, stages: tuple[str, ...]) -> list[str]:
    """The `python -m lcsbench ...` arguments the part's job runs."""
    line = ["reproduce", *study.argv_base, "--stage", ",".join(stages), "--slurm-job", part.name]
    if part.experiments is not None:
        line += ["--experiments", ",".join(part.experiments)]
    return line


def slurm_environment() -> dict[str, str]:
    """The environment sbatch passes on to the jobs: this interpreter (PYTHON, read by slurm_command.sh) and this
    lcsbench (PYTHONPATH), as the local runner's commands get them."""
    import os
    import sys

    import lcsbench

    env = dict(os.environ)
    package_root = str(Path(lcsbench.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHON"] = sys.executable
    return env


def recorded_jobs(study: Study) -> dict:
    from lcsbench.study.runner import read_json

    return read_json(study.out / SLURM_JOBS) or {"jobs": {}, "submitted": []}


def active_jobs(study: Study, env: dict | None = None) -> dict[str, str]:
    """{part: job id} of the study's recorded jobs that SLURM still queues or runs ({} without SLURM's clients)."""
    import shutil

    from lcsbench import slurm

    jobs = recorded_jobs(study)["jobs"]
    if not jobs or shutil.which("scontrol") is None:
        return {}
    try:
        table = slurm.job_table(env)
    except slurm.SlurmError:
        return {}
    return {part: entry["id"] for part, entry in jobs.items()
            if table.get(entry["id"], {}).get("JobState") in slurm.ACTIVE
            and table[entry["id"]].get("Reason") != "DependencyNeverSatisfied"}


def submit_part(study: Study, part: Part, stages: tuple[str, ...], after: list[str], options: SlurmOptions,
                env: dict) -> dict:
    """sbatch one part (its log in OUT/slurm/); its record for slurm_jobs.json. The sbatch line goes into
    commands.sh."""
    import datetime

    from lcsbench import slurm

    script = Path(env["PYTHONPATH"].split(":")[0]) / SLURM_SCRIPT
    if not script.is_file():
        raise SystemExit(f"reproduce: --slurm runs each job with {SLURM_SCRIPT}, which is not at {script}: run "
                         f"reproduce from a clone of the repository")
    slug = part.name.replace(" ", "-")
    log = (study.out / "slurm").resolve() / f"{slug}-%j.out"
    log.parent.mkdir(parents=True, exist_ok=True)
    sbatch = ["--job-name", f"lcsbench-{slug}", "--output", str(log), "--open-mode=append", *options.sbatch()]
    line = job_line(study, part, stages)
    try:
        job = slurm.submit(script, line, sbatch, after_ok=after, env=env, cwd=Path.cwd())
    except slurm.SlurmError as error:
        raise SystemExit(f"reproduce: submitting {part.name}: {error}") from None
    dependency = [f"--dependency=afterok:{':'.join(after)}"] if after else []
    study.record(["sbatch", *sbatch, *dependency, str(script), "python", "-m", "lcsbench", *line],
                 f"SLURM job {job}: {part.name}")
    return {"id": job, "log": str(log).replace("%j", job), "after": after,
            "submitted": datetime.datetime.now().isoformat(timespec="seconds")}


def submit_study(study: Study, stages: tuple[str, ...], options: SlurmOptions) -> dict[str, str]:
    """Submit the parts of the study not done yet, each after the parts it needs (afterok), recording their ids in
    OUT/slurm_jobs.json; a part whose recorded job is still queued or running is not submitted again, a part the
    study's outputs say is done not at all. Returns {part: job id} of the jobs this study now waits for."""
    from lcsbench.study.evaluate import judge_arguments
    from lcsbench.study.runner import write_atomic

    env = slurm_environment()
    record = recorded_jobs(study)
    active = active_jobs(study, env)
    ids: dict[str, str] = {}  # parts not done: the job (kept or new) each later part waits for
    for part in slurm_parts(study):
        wanted = tuple(stage for stage in part.stages if stage in stages)
        if not wanted:
            continue
        if "evaluate" in wanted:
            judge_arguments(study)  # no judge for the scale: refused now, not in a job an hour later
        waits_on = [ids[name] for name in part.after if name in ids]
        if not waits_on and part.done():
            study.say(f"{part.name}: done (the study's outputs are current), not submitted")
            continue
        if part.name in active:
            ids[part.name] = active[part.name]
            study.say(f"{part.name}: SLURM job {active[part.name]} is still queued or running, not submitted again")
            continue
        if study.dry_run:  # the job's line, with the parts it waits for
            ids[part.name] = f"<{part.name}>"
            print(shlex.join(["sbatch", *options.sbatch(), *(["--dependency=afterok:" + ":".join(waits_on)]
                                                             if waits_on else []), SLURM_SCRIPT, "python", "-m",
                              "lcsbench", *job_line(study, part, wanted)]), flush=True)
            continue
        entry = submit_part(study, part, wanted, waits_on, options, env)
        ids[part.name] = entry["id"]
        record["jobs"][part.name] = entry
        record["submitted"].append({"part": part.name, **entry})
        write_atomic(study.out / SLURM_JOBS, json.dumps(record, indent=2))  # after each: a crash loses no id
        study.say(f"{part.name}: submitted as SLURM job {entry['id']}"
                  + (f" (after {', '.join(waits_on)})" if waits_on else "") + f", log {entry['log']}")
    return ids


def run_study_on_slurm(study: Study, stages: tuple[str, ...], options: SlurmOptions) -> None:
    """reproduce --slurm: submit (holding the study's lock, so two calls never submit twice), then follow the jobs
    to their end, or return with their ids (--no-wait)."""
    import shutil

    from lcsbench import slurm
    from lcsbench.study.runner import study_lock

    if shutil.which("sbatch") is None and not study.dry_run:
        raise SystemExit("reproduce: --slurm submits the study with sbatch, which is not installed here: run it on a "
                         "SLURM cluster's login node (or start a test cluster: scripts/local_slurm.sh start), or "
                         "leave --slurm out to run the study on this machine")
    if study.dry_run:
        submit_study(study, stages, options)
        return
    study.out.mkdir(parents=True, exist_ok=True)
    with study_lock(study.out, study.runs):
        ids = submit_study(study, stages, options)
        if not ids:
            study.say("every part of the study is done: nothing submitted")
            return
        study.say(f"SLURM jobs: {' '.join(f'{name}={job}' for name, job in ids.items())} "
                  f"(recorded in {study.out / SLURM_JOBS})")
        if not options.wait:
            study.say("not waiting (--no-wait): follow them with `squeue`; rerun this command to wait for them or "
                      "resume (finished and queued parts are not submitted again)")
            return
        try:
            states = slurm.follow(ids, study.say)
        except slurm.SlurmError as error:
            raise SystemExit(f"reproduce: lost sight of the SLURM jobs ({error}); they may go on: rerun this "
                             f"command to follow them") from None
        except KeyboardInterrupt:
            raise SystemExit(f"reproduce: stopped following the SLURM jobs; they go on ({' '.join(ids.values())}): "
                             f"rerun this command to follow them, or `scancel` them") from None
    parts = {part.name: part for part in slurm_parts(study)}
    for name, state in states.items():
        if state == "FORGOTTEN":  # ended unseen: its outputs say how
            states[name] = "COMPLETED" if parts[name].done() else "FORGOTTEN (its outputs are not there)"
            study.say(f"SLURM job {ids[name]} ({name}): forgotten by SLURM; judged by its outputs: {states[name]}")
    failed = {name: state for name, state in states.items() if state not in ("COMPLETED", "DEPENDENCY_FAILED")}
    never = [name for name, state in states.items() if state == "DEPENDENCY_FAILED"]
    if failed or never:
        jobs = recorded_jobs(study)["jobs"]
        raise SystemExit(f"reproduce: {len(failed)} SLURM job(s) of the study failed: " + "; ".join(
            f"{name} (job {ids[name]}: {state}, log {jobs[name]['log']})" for name, state in failed.items())
            + (f"; not run, as they wait for it: {', '.join(never)}" if never else "")
            + ". Read the log, fix what it reported and rerun this command: finished work is kept")
