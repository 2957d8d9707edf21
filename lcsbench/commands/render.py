"""`python -m lcsbench render`: render CLEVR scenes with Blender (Cycles) into WebDataset shards:
OUT/n<k>/{train,val}-NNNNNN.tar per object count k, plus OUT/manifest.json. Resumable: rerun the same command after
a crash or a stop (SIGTERM, Ctrl-C); finished shards are skipped.

Examples:

    python -m lcsbench render --out data/clevr64 --counts 1-3 --per-count 500000 --resolution 64 \\
        --samples-per-pixel 64 --seed 0
    python -m lcsbench render --out data/judge64_layouts --layout data/judge_layouts.json --resolution 64
    python -m lcsbench render --out data/clevr64 --verify
"""

from __future__ import annotations

import json
import os
import sys

from lcsbench.commands._common import CommandParser, check_output_dir, command_parser
from lcsbench.data.layouts import LayoutError, load_layout_file
from lcsbench.data.render import render_dataset, render_layouts
from lcsbench.data.render_errors import RenderError, RenderInterrupted
from lcsbench.data.render_plan import MAX_OBJECTS, RenderSettings, parse_shard_range
from lcsbench.data.scenes import parse_counts
from lcsbench.data.shards import ShardError, verify_dataset

DEFAULTS = RenderSettings()
RENAMED = {"--samples": "--samples-per-pixel"}  # old flag -> new (deprecated alias)


def build_parser() -> CommandParser:
    parser = command_parser("render", __doc__)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder: the dataset root")
    parser.add_argument("--counts", default="1-3",
                        help=f"object counts: a range '1-3' or a list '1,2,5', each in 1..{MAX_OBJECTS} (CLEVR's "
                             f"placement rules fit {MAX_OBJECTS} objects in about 1 of 2,000 layouts, "
                             f"{MAX_OBJECTS + 1} in fewer than 1 of 100,000)")
    parser.add_argument("--per-count", type=int, default=1000, help="training images per object count")
    parser.add_argument("--val-per-count", type=int, default=None,
                        help="held-out images per object count (default: --per-count / 50, rounded up)")
    parser.add_argument("--resolution", type=int, default=DEFAULTS.resolution, help="square image size in pixels")
    parser.add_argument("--samples-per-pixel", type=int, default=DEFAULTS.samples, help="Cycles samples per pixel")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="dataset seed")
    parser.add_argument("--shard-size", type=int, default=DEFAULTS.shard_size, help="images per shard")
    parser.add_argument("--workers", type=int, default=None,
                        help="Blender processes at once (default: one per usable core)")
    parser.add_argument("--shards", default=None,
                        help="render only shards i:j of the ordered shard list (split a dataset over machines)")
    parser.add_argument("--node-rank", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)),
                        help="this machine's rank: it renders every num-nodes-th shard (default $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--num-nodes", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_COUNT", 1)),
                        help="machines sharing the dataset (default $SLURM_ARRAY_TASK_COUNT)")
    parser.add_argument("--layout", default=None,
                        help="JSON file of requested scenes (see lcsbench/data/layouts.py): renders them exactly "
                             "into OUT/layout/eval-NNNNNN.tar instead of random scenes")
    parser.add_argument("--repair", action="store_true",
                        help="verify finished shards fully (the manifest's checksum where recorded, every PNG and "
                             "JSON member decodes), move damaged ones aside (*.corrupt, numbered) and re-render them")
    parser.add_argument("--verify", action="store_true",
                        help="only report: verify every shard the manifest in --out lists as --repair does, change "
                             "nothing, exit 1 if any is damaged (needs no Blender; other options are not used)")
    parser.add_argument("--blender", default=None, help="Blender executable (default: $LCSBENCH_BLENDER or blender)")
    parser.add_argument("--fov", choices=("crop", "full"), default=DEFAULTS.fov,
                        help="crop: CLEVR's vertical field of view (square = centre crop of CLEVR); full: horizontal")
    parser.add_argument("--min-visible-fraction", type=float, default=DEFAULTS.min_visible_fraction,
                        help="minimum visible pixels of every object, as a fraction of the image")
    parser.add_argument("--min-dist", type=float, default=DEFAULTS.min_dist, help="CLEVR's min_dist")
    parser.add_argument("--margin", type=float, default=DEFAULTS.margin, help="CLEVR's margin")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.deprecated_aliases(RENAMED)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify:
        if args.repair:
            parser.error("--verify only reports and --repair mends: pass one of them")
        return verify(args.out)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers is the number of Blender processes at once, >= 1 (leave it out for one per "
                     f"usable core); found {args.workers}")
    try:
        check_output_dir(args.out)  # before Blender starts: a file in the way, or a folder that refuses files
    except SystemExit as refusal:
        print(f"lcsbench render: error: {refusal}", file=sys.stderr)
        return 1
    try:
        placement = {"fov": args.fov, "min_visible_fraction": args.min_visible_fraction,
                     "min_dist": args.min_dist, "margin": args.margin}
        run = {"workers": args.workers, "shards": parse_shard_range(args.shards) if args.shards else None,
               "node_rank": args.node_rank, "num_nodes": args.num_nodes, "repair": args.repair,
               "blender": args.blender, "progress": not args.no_progress}
        if args.layout:
            scenes = load_layout_file(args.layout, args.resolution)
            summary = render_layouts(args.out, scenes, resolution=args.resolution, samples=args.samples_per_pixel,
                                     seed=args.seed, shard_size=args.shard_size, **placement, **run)
        else:
            summary = render_dataset(args.out, counts=parse_counts(args.counts), per_count=args.per_count,
                                     val_per_count=args.val_per_count, resolution=args.resolution,
                                     samples=args.samples_per_pixel, seed=args.seed, shard_size=args.shard_size,
                                     **placement, **run)
    except RenderInterrupted as error:
        print(f"lcsbench render: {error}", file=sys.stderr)
        return 128 + error.signum  # the shell's code for a process ended by that signal
    except (RenderError, ShardError, LayoutError, ValueError, OSError) as error:
        print(f"lcsbench render: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    if summary["complete_shards"] < summary["total_shards"]:
        print(f"{summary['complete_shards']}/{summary['total_shards']} shards complete "
              f"(other machines render the rest, or rerun to resume)", file=sys.stderr)
    return 0


def verify(out: str) -> int:
    """`--verify`: the report of shards.verify_dataset as JSON; exit 1 if a shard is damaged."""
    fix = f"mend it with the dataset's own render command plus --repair (`python -m lcsbench render --out {out} ...`)"
    try:
        report = verify_dataset(out, fix)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"lcsbench render: error: cannot verify {out}: {error}", file=sys.stderr)
        return 1
    print(json.dumps({**report, "missing": len(report["missing"]), "damaged": len(report["damaged"])}, indent=2))
    for line in report["damaged"]:
        print(f"damaged: {line}", file=sys.stderr)
    if report["missing"]:
        print(f"{len(report['missing'])} shard(s) not rendered yet (e.g. {report['missing'][0]}): rerun the render "
              f"to finish them", file=sys.stderr)
    return 1 if report["damaged"] else 0
