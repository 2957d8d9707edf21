"""`python -m lcsbench oracle-check`: the oracle row of the length-generalization protocol alone. Blender
renders of the requested layouts, judged by a trained judge, should succeed at every k (k_max = 12 for
locations, 8 for colours).

Examples:

    python -m lcsbench oracle-check --out reports/oracle64 --samples-per-k 8
    python -m lcsbench oracle-check --judge runs/judge/.../last.ckpt --out reports/oracle32 --conditioning color

Without --judge, the judge shipped with lcsbench for --resolution is used (lcsbench/weights/), as `lengthgen` and
`eval-judge` do. Renders (or reuses) OUT/oracle_render, judges it and writes OUT/lengthgen.json (one row,
"oracle"), the curve and detection grids per k. The rule is the strict one (exactly the requested objects at every
k). The study is `lcsbench.analysis.lengthgen.run` without a denoiser.
"""

from __future__ import annotations

from lcsbench.commands._common import CommandParser, check_output_dir, command_parser
from lcsbench.data.scenes import DEFAULT_GRID_SIZE

RENAMED = {"--kind": "--conditioning", "--oracle-samples": "--samples-per-pixel"}  # old flag -> new (deprecated)
SHIPPED_RESOLUTION = 64  # the shipped judge used when neither --judge nor --resolution is given (load_judge's)


def build_parser() -> CommandParser:
    parser = command_parser("oracle-check", __doc__)
    parser.add_argument("--judge", default=None, help="judge checkpoint (fit --config configs/judge.yaml); default: "
                                                      "the judge shipped for --resolution")
    parser.add_argument("--resolution", type=int, default=None,
                        help=f"image size of the renders; the judge must be trained at it (default: the --judge's "
                             f"own, or {SHIPPED_RESOLUTION} for the shipped judge)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--conditioning", choices=("location", "color"), default="location",
                        help="the protocol's requests: locations (k = 1..12) or colours (k = 1..8)")
    parser.add_argument("--samples-per-k", type=int, default=8, help="renders per k")
    parser.add_argument("--samples-per-pixel", type=int, default=16, help="Cycles samples per pixel")
    parser.add_argument("--grid-size", type=int, default=DEFAULT_GRID_SIZE, help="conditioning grid G (cells per side)")
    parser.add_argument("--seed", type=int, default=0, help="object placement and render seed")
    parser.deprecated_aliases(RENAMED)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.samples_per_k < 1 or args.samples_per_pixel < 1 or args.grid_size < 1:
        raise SystemExit(f"oracle-check: need --samples-per-k >= 1, {parser.flag('--samples-per-pixel')} >= 1 and "
                         f"--grid-size >= 1 (cells per side, dividing the resolution; 16 is the paper's); found "
                         f"{args.samples_per_k}, {args.samples_per_pixel}, {args.grid_size}")
    out = check_output_dir(args.out)

    from lcsbench.analysis import lengthgen as lg
    from lcsbench.data.conditioning import check_grid_size
    from lcsbench.data.render import RenderError
    from lcsbench.data.shards import ShardError, write_json_atomic
    from lcsbench.models.judge import load_judge

    try:
        judge = load_judge(args.judge, resolution=args.resolution or SHIPPED_RESOLUTION)
        resolution = judge.resolution
        if args.resolution is not None and args.resolution != resolution:
            raise ValueError(f"--resolution {args.resolution}: the judge {judge.source} was trained on "
                             f"{resolution}x{resolution} images: leave --resolution out, or pass a judge trained at "
                             f"{args.resolution}")
        check_grid_size(args.grid_size, resolution, resolution)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"oracle-check: {error}") from None
    ks = tuple(range(1, 13 if args.conditioning == "location" else 9))
    rule = lg.SuccessRule(args.conditioning, (max(ks),), "all")  # exactly the requested objects at every k
    protocol = lg.LengthGenProtocol(rule, ks, args.samples_per_k, grid_size=args.grid_size, seed=args.seed)
    try:  # the judge alone (no denoiser): the oracle row, each object at a random point of its cell (the cell rule)
        result = lg.run(None, judge, protocol, oracle_root=out / "oracle_render",
                        oracle_samples=args.samples_per_pixel, record={"judge": judge.identity["path"],
                                                                            "judge_sha256": judge.identity["sha256"]})
    except (RenderError, ShardError, ValueError, OSError) as error:
        raise SystemExit(f"oracle-check: the oracle render in {out / 'oracle_render'} failed: {error}") from None
    write_json_atomic(out / "lengthgen.json", result.report)
    lg.save_figures(result, out, title="oracle: judge on Blender renders")
    row = result.report["rows"]["oracle"]
    print("| k | success | mean missing | mean extra |\n|---|---|---|---|")
    for k, v in row["per_k"].items():
        print(f"| {k} | {v['success_rate']:.0%} | {v['mean_missing']:.2f} | {v['mean_extra']:.2f} |")
    print(f"oracle k_max {row['k_max']} (strict {row['k_max_strict']})")
    return 0
