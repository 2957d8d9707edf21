"""`python -m lcsbench oracle-check`: the oracle row of the length-generalization protocol alone. Blender
renders of the requested layouts, judged by a trained judge, should succeed at every k (k_max = 12 for
locations, 8 for colours).

    python -m lcsbench oracle-check --judge runs/judge/.../last.ckpt --out reports/oracle64 --samples-per-k 8

Renders (or reuses) OUT/oracle_render, judges it and writes OUT/lengthgen.json (one row, "oracle"), the curve
and detection grids per k. The rule is the strict one (exactly the requested objects at every k). The study is
`lcsbench.analysis.lengthgen.run` without a denoiser.
"""

from __future__ import annotations

import argparse

from lcsbench.commands._common import check_output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lcsbench oracle-check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", required=True, help="judge checkpoint")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--kind", choices=("location", "color"), default="location")
    parser.add_argument("--samples-per-k", type=int, default=8)
    parser.add_argument("--oracle-samples", type=int, default=16, help="Cycles samples per pixel")
    parser.add_argument("--grid-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.samples_per_k < 1 or args.oracle_samples < 1 or args.grid_size < 1:
        raise SystemExit(f"oracle-check: need --samples-per-k >= 1, --oracle-samples >= 1 and --grid-size >= 1 (cells "
                         f"per side, dividing the resolution; 16 is the paper's); found {args.samples_per_k}, "
                         f"{args.oracle_samples}, {args.grid_size}")
    out = check_output_dir(args.out)

    from lcsbench.analysis import lengthgen as lg
    from lcsbench.data.conditioning import check_grid_size
    from lcsbench.data.render import RenderError
    from lcsbench.data.shards import ShardError, write_json_atomic
    from lcsbench.models.judge import load_judge

    try:
        judge = load_judge(args.judge)
        resolution = judge.resolution
        check_grid_size(args.grid_size, resolution, resolution)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"oracle-check: {error}") from None
    ks = tuple(range(1, 13 if args.kind == "location" else 9))
    rule = lg.SuccessRule(args.kind, (max(ks),), "all")  # exactly the requested objects at every k
    protocol = lg.LengthGenProtocol(rule, ks, args.samples_per_k, grid_size=args.grid_size, seed=args.seed)
    try:  # the judge alone (no denoiser): the oracle row, each object at a random point of its cell (the cell rule)
        result = lg.run(None, judge, protocol, oracle_root=out / "oracle_render", oracle_samples=args.oracle_samples,
                        record={"judge": args.judge})
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
