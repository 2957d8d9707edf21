"""The stages render and fit, and the order of every stage (export, evaluate and report live beside this file;
the same stages as SLURM jobs in slurm_jobs.py)."""

from __future__ import annotations

from pathlib import Path

from lcsbench.study.runner import RUN_VERSION, Job, Study, flags, run_jobs


def render_is_complete(root: Path, render: dict) -> bool:
    """Every shard the manifest lists is on disk, and the manifest's settings are the render's arguments."""
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


def needed_renders(study: Study) -> list[str]:
    """The counts keys of the scale's renders that the chosen experiments train or build on, in the scale's order."""
    wanted = {study.scale.render_for(study.record_of(name).counts) for name in study.experiments}
    return [key for key in study.scale.renders if key in wanted]


def stage_render(study: Study) -> None:
    for key in needed_renders(study):
        render = {name: value for name, value in study.scale.renders[key].items() if name != "root"}
        root = study.render_root(key)
        if render_is_complete(root, render):
            study.say(f"render: {root} is complete, skipped")
            continue
        study.run(["render", "--out", str(root), *flags(render)], f"render {root}")


def fit_arguments(study: Study, exp: str, config: dict, resume: bool) -> list[str]:
    """The `fit` command of one experiment: its config stack, a fixed log folder, the data root, the resume
    checkpoint."""
    argv = ["fit", *[item for path in study.configs(exp) for item in ("--config", str(path))],
            "--trainer.logger.init_args.save_dir", str(study.runs / exp),
            "--trainer.logger.init_args.version", RUN_VERSION]
    root = study.render_root(study.record_of(exp).counts)
    if Path(config["data_root"]).resolve() != root.resolve():
        argv += ["--data.init_args.root", str(root)]
    if resume:
        argv += ["--ckpt_path", str(study.last_ckpt(exp))]
    return argv


def check_fit_finished(study: Study, exp: str, max_steps: int) -> None:
    from lcsbench.checkpoints import checkpoint_step

    last = study.last_ckpt(exp)
    step = checkpoint_step(last) if last.exists() else None
    if step is None or step < max_steps:
        raise SystemExit(f"reproduce: fit {exp} ended without a last.ckpt at max_steps {max_steps} "
                         f"({last}: {'missing' if step is None else f'step {step}'}): the config's "
                         f"ModelCheckpoint needs save_last: true and every_n_train_steps dividing max_steps")


def stage_fit(study: Study) -> None:
    """Train the experiments whose last.ckpt is short of max_steps (run_jobs: one after another on every core, or
    --parallel N at once on their own cores)."""
    from lcsbench.checkpoints import checkpoint_step

    for key in needed_renders(study):
        root = study.render_root(key)
        if not (root / "manifest.json").exists():
            study.refuse(f"the training data {root} is missing: run `--stage render` first (or pass --data)")
    jobs = []
    for exp in study.trained:
        config = study.config(exp)
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


STAGES = ("render", "fit", "export", "evaluate", "report")


def run_study(study: Study, stages: tuple[str, ...]) -> None:
    """Run the stages in order, holding the study's lock (none in a dry run)."""
    import contextlib

    from lcsbench.study.evaluate import stage_evaluate
    from lcsbench.study.export import stage_export
    from lcsbench.study.processes import commands_end_with_the_study
    from lcsbench.study.report import stage_report
    from lcsbench.study.runner import study_lock
    from lcsbench.study.slurm_jobs import SLURM_JOBS, active_jobs  # (it imports this module: read at run time)

    functions = {"render": stage_render, "fit": stage_fit, "export": stage_export, "evaluate": stage_evaluate,
                 "report": stage_report}
    with contextlib.nullcontext() if study.dry_run else study_lock(study.out, study.runs, part=study.slurm_job), \
            commands_end_with_the_study(study.running):
        if not study.dry_run and study.slurm_job is None and (queued := active_jobs(study)):
            raise SystemExit(f"reproduce: {len(queued)} SLURM job(s) of this study are queued or running "
                             f"({', '.join(f'{name}: {job}' for name, job in queued.items())}, from "
                             f"{study.out / SLURM_JOBS}): running it here too would train into the same runs. "
                             f"Add --slurm to follow them, or scancel them first")
        for stage in stages:
            study.say(f"stage {stage}" + (" (dry run: commands only)" if study.dry_run else ""))
            functions[stage](study)
