"""`python -m lcsbench reproduce`: the paper's study (Tables 1 and 2, Figures 2 and 4, the closed forms) end to end.

Examples:

    python -m lcsbench reproduce --scale smoke --out reports/reproduction/smoke          # minutes, CPU
    python -m lcsbench reproduce --scale cpu --out reports/reproduction/cpu --stage evaluate
    python -m lcsbench reproduce --scale paper --out reports/reproduction/paper --dry-run

Stages (`--stage all` runs them in this order; each is skipped where its outputs exist, resumes where a
previous run stopped, and refuses with a message naming the stage to run when what it needs is missing):

    render     python -m lcsbench render ... for each render the experiments need (keyed by object counts; resumes
               itself; skipped when every shard is there)
    fit        per experiment python -m lcsbench fit --config <base> [--config <patch layer>] --config <delta> into
               RUNS/<exp>/lightning_logs/run, resumed from its last.ckpt; skipped when last.ckpt holds max_steps
    export     the EMA weights of each run into OUT/weights/<exp>.pt (+ .json): small files that every command
               takes as --ckpt, carrying the trained counts, label mode, grid size and resolution that
               `lengthgen` reads, the step, the training wall time and the run's config; the closed forms' specs
    evaluate   per experiment python -m lcsbench lengthgen (with the Blender oracle row, rendered once and
               shared by the experiments) into OUT/<exp>/lengthgen, python -m lcsbench locality into
               OUT/<exp>/locality and the r2 against its closed forms; skipped when made from the current weights
    report     OUT/table.md (the paper's values beside lcsbench's, the pre-registered goals, per-k success with 95%
               Wilson intervals beside the oracle), OUT/report.json (every number, configs, wall times, the
               machine) and the figures; rebuilt when an input is newer than report.json

Every command a stage runs is appended to OUT/commands.sh (export and report as the `reproduce` line that
redoes them); --dry-run prints the commands and runs nothing. The experiments are records (lcsbench/study/
experiments.py) and the scales are declared once (lcsbench/study/scales.py): `smoke` (tiny, the pipeline only,
tested in CI), `cpu` (32 px, G = 16, what 2 CPU cores train in hours; configs/reproduce/cpu/), `paper` (64 px,
edm2-img64-xs, G = 16: configs/exp1.yaml, exp2.yaml, exp3.yaml, for a GPU cluster). docs/architecture.md says
where a new experiment goes.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import lcsbench.study.experiments  # noqa: F401 - registers the study's experiments
from lcsbench.commands._common import CommandParser, check_output_dir, command_parser
from lcsbench.study.runner import Study
from lcsbench.study.scales import SCALES
from lcsbench.study.slurm_jobs import SlurmOptions, run_study_on_slurm
from lcsbench.study.stages import STAGES, run_study


def build_parser() -> CommandParser:
    scales = "; ".join(f"{name}: {scale.note}" for name, scale in SCALES.items())
    parser = command_parser("reproduce", __doc__)
    parser.add_argument("--scale", required=True, choices=list(SCALES), help=scales)
    parser.add_argument("--out", required=True, metavar="DIR", help="report folder, e.g. reports/reproduction/<scale>")
    parser.add_argument("--runs", default=None, help="training runs (default: runs/reproduction/<scale>)")
    parser.add_argument("--data", default=None, help="the rendered dataset (default: the scale's, e.g. "
                                                     "data/reproduce32 for cpu)")
    parser.add_argument("--stage", default="all", type=stage_list, metavar="STAGE",
                        help=f"run one stage ({', '.join(STAGES)}), a comma list of them, or all")
    parser.add_argument("--experiments", default=None, help="comma list of the scale's experiments, e.g. exp1,exp2 "
                                                            "(default: all)")
    parser.add_argument("--judge", default=None, help="judge checkpoint for lengthgen (default: the judge shipped "
                                                      "for the scale's resolution)")
    parser.add_argument("--parallel", type=int, default=1,
                        help="commands at once (fits, evaluations), each pinned to its own share of the cores with "
                             "as many threads (default 1: one after another on every core). Small models gain: two "
                             "tiny 32 px fits on one core each made 1.36x the steps of one fit on both cores")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    cluster = parser.add_argument_group("on a SLURM cluster (docs/cluster.md)")
    cluster.add_argument("--slurm", action="store_true",
                         help="submit the study's jobs to SLURM instead of running them here: the render, one job "
                              "per fit (with its export), per closed form its spec, each model's evaluations after "
                              "its fit (--dependency=afterok), the report last; job ids in OUT/slurm_jobs.json, logs "
                              "in OUT/slurm/. Rerun to resume: done parts and queued jobs are not submitted again")
    cluster.add_argument("--no-wait", action="store_true",
                         help="with --slurm: return once the jobs are submitted (default: follow them to their end)")
    cluster.add_argument("--partition", default=None, help="with --slurm: the partition (default: the cluster's)")
    cluster.add_argument("--time", default="48:00:00", help="with --slurm: each job's time limit (default 48:00:00)")
    cluster.add_argument("--cpus-per-task", type=int, default=1, help="with --slurm: cores per job (default 1)")
    cluster.add_argument("--gpus-per-node", type=int, default=None,
                         help="with --slurm: GPUs per job (default: none asked for; the configs train on CPU at the "
                              "smoke and cpu scales)")
    cluster.add_argument("--sbatch-args", default="", metavar="ARGS",
                         help="with --slurm: more sbatch options for every job, as one string, e.g. "
                              "\"--account proj --qos normal\"")
    parser.add_argument("--slurm-job", default=None, help=argparse.SUPPRESS)  # a job of --slurm runs this part
    parser.deprecated_aliases({"--parallel-fits": "--parallel"})
    return parser


def stage_list(text: str) -> tuple[str, ...]:
    """--stage: all, one stage, or a comma list of them (run in the study's order)."""
    if text == "all":
        return STAGES
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in STAGES for name in names):
        raise argparse.ArgumentTypeError(f"takes all, one of {', '.join(STAGES)} or a comma list of them; got {text!r}")
    return tuple(stage for stage in STAGES if stage in names)


def slurm_options(args: argparse.Namespace) -> SlurmOptions:
    """The --slurm flags, checked; refused where given without --slurm."""
    defaults = {"no_wait": False, "partition": None, "time": "48:00:00", "cpus_per_task": 1, "gpus_per_node": None,
                "sbatch_args": ""}
    given = ["--" + name.replace("_", "-") for name, default in defaults.items() if getattr(args, name) != default]
    if given and not args.slurm:
        raise SystemExit(f"reproduce: {', '.join(given)} set(s) how SLURM runs the study's jobs: add --slurm, or "
                         f"leave {'it' if len(given) == 1 else 'them'} out to run the study here")
    if args.cpus_per_task < 1 or (args.gpus_per_node is not None and args.gpus_per_node < 0):
        raise SystemExit(f"reproduce: --cpus-per-task takes 1 or more and --gpus-per-node 0 or more; got "
                         f"{args.cpus_per_task} and {args.gpus_per_node}")
    if args.slurm and args.parallel != 1:
        raise SystemExit("reproduce: --parallel pins commands to this machine's cores; with --slurm every command "
                         "is its own job: leave --parallel out")
    try:
        extra = shlex.split(args.sbatch_args)
    except ValueError as error:
        raise SystemExit(f"reproduce: --sbatch-args {args.sbatch_args!r} is not a shell-quoted list ({error})") \
            from None
    return SlurmOptions(args.partition, args.time, args.cpus_per_task, args.gpus_per_node, extra, not args.no_wait)


def chosen_experiments(text: str | None, known: list[str]) -> list[str]:
    experiments = known if text is None else [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in experiments if e not in known]
    if unknown or not experiments:
        raise SystemExit(f"reproduce: --experiments takes a comma list among {','.join(known)}; found {text!r}")
    return experiments


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    scale = SCALES[args.scale]
    experiments = chosen_experiments(args.experiments, scale.experiments)
    if args.judge is not None and not Path(args.judge).is_file():
        raise SystemExit(f"reproduce: --judge {args.judge} does not exist: pass a judge checkpoint from "
                         f"`python -m lcsbench fit --config configs/judge.yaml` (runs/judge/.../last.ckpt), or leave "
                         f"--judge out to use the judge shipped for the scale's resolution")
    for flag, folder in (("--out", args.out), ("--runs", args.runs)):
        if folder is not None:
            check_output_dir(folder, flag)  # a file or an unwritable folder is refused before any stage runs
    if args.parallel < 1:
        raise SystemExit(f"reproduce: --parallel is a number of commands at once (1 or more), got {args.parallel}")
    if args.data is not None and len(scale.renders) > 1:
        raise SystemExit(f"reproduce: --data replaces the scale's one render, but the {args.scale} scale has "
                         f"{len(scale.renders)} ({', '.join(scale.renders)} objects): leave --data out")
    runs = Path(args.runs or f"runs/reproduction/{args.scale}")
    data = Path(args.data) if args.data else Path(next(iter(scale.renders.values()))["root"])
    base = ["--scale", args.scale, "--out", args.out, "--runs", str(runs), "--data", str(data)]
    if args.judge:
        base += ["--judge", args.judge]
    options = slurm_options(args)
    study = Study(scale, Path(args.out), runs, Path(args.data) if args.data else None, experiments, args.judge,
                  args.dry_run, base, args.parallel, chosen=args.experiments is not None, slurm_job=args.slurm_job)
    stages = args.stage
    if args.slurm:
        run_study_on_slurm(study, stages, options)
        return 0
    run_study(study, stages)
    if not args.dry_run and "report" in stages:
        study.say(f"done: {study.out / 'table.md'}")
    return 0
