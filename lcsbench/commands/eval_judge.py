"""`python -m lcsbench eval-judge`: judge accuracy per object count on held-out renders (exact-count,
localization and colour rates).

Examples:

    python -m lcsbench eval-judge --data data/judge64_holdout
    python -m lcsbench eval-judge --judge runs/judge/lightning_logs/version_0/checkpoints/last.ckpt \\
        --data data/judge64 --degrade 1.0,0.05,0.03 --json reports/judge64_degraded.json

Without --judge, the judge shipped with lcsbench for the data's resolution is measured (lcsbench/weights/).
Reads the `val` shards of every object count in DATA's manifest (images the judge never trained on, when it was
fitted on the `train` shards of the same render, or a separate render). Goal: exact count >= 95% for k = 1..12.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from lcsbench.commands._common import CommandParser, check_output_file, command_parser
from lcsbench.data.scenes import DEFAULT_GRID_SIZE


def build_parser() -> CommandParser:
    parser = command_parser("eval-judge", __doc__)
    parser.add_argument("--judge", default=None, help="judge checkpoint (fit --config configs/judge.yaml); default: "
                                                      "the judge shipped for the data's resolution")
    parser.add_argument("--data", required=True, help="rendered dataset root with val shards")
    parser.add_argument("--counts", default=None, help="object counts to evaluate, e.g. 1-12 (default: all)")
    parser.add_argument("--tolerance-cells", type=float, default=1.0, help="localization tolerance in grid cells")
    parser.add_argument("--grid-size", type=int, default=DEFAULT_GRID_SIZE, help="conditioning grid G")
    parser.add_argument("--clear-pixels", type=int, default=20,
                        help="also report exact count on images whose every object shows at least this many pixels")
    parser.add_argument("--degrade", default=None, metavar="BLUR,NOISE,COLOR",
                        help="judge degraded renders: Gaussian blur sigma (px), noise std and colour shift applied "
                             "to every image, e.g. 1.0,0.05,0.03 (what a diffusion sample looks like)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per judge batch")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the printed table to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    levels = parse_degradation(parser, args.degrade) if args.degrade else None
    check_options(args)
    if args.json:
        check_output_file(args.json, "--json")

    import torch

    with torch.no_grad():  # judging only; a caller in the same process keeps its own autograd setting
        return report_accuracy(args, levels)


def report_accuracy(args: argparse.Namespace, levels: tuple[float, float, float] | None) -> int:
    """Judge the held-out renders and print (and with --json write) the accuracy table."""
    from lcsbench.data.conditioning import check_grid_size
    from lcsbench.data.datamodule import CLEVRDataModule
    from lcsbench.data.scenes import parse_counts
    from lcsbench.data.shards import load_manifest
    from lcsbench.analysis.judge import judge_accuracy
    from lcsbench.models.judge import load_judge

    try:
        counts = parse_counts(args.counts) if args.counts is not None else None
        manifest = load_manifest(Path(args.data))
        resolution = manifest.get("settings", {}).get("resolution", 64)
        judge = load_judge(args.judge, resolution=resolution)
        check_grid_size(args.grid_size, judge.resolution, judge.resolution)
        if counts is None:
            groups = manifest.get("shards", {})
            counts = sorted(int(g[1:]) for g, splits in groups.items() if g[1:].isdecimal() and splits.get("val"))
        data = CLEVRDataModule(args.data, counts=counts, batch_size=args.batch_size, num_workers=0,
                               grid_size=args.grid_size, resolution=judge.resolution)
        batches = data.val_dataloader()
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"eval-judge: {error}") from None
    if levels is not None:
        batches = degraded_batches(batches, *levels)
    table = judge_accuracy(judge, batches, args.grid_size, args.tolerance_cells, args.clear_pixels)
    shipped = "" if args.judge else " (shipped with lcsbench)"
    print(f"judge {judge.source}{shipped} on held-out renders of {args.data} ({judge.resolution}x{judge.resolution}), "
          f"tolerance {args.tolerance_cells} cell(s)"
          + (f", degraded: blur {levels[0]:g} px, noise {levels[1]:g}, colour shift {levels[2]:g}" if levels else ""))
    clear = f"exact, objects >= {args.clear_pixels} px (images)"
    print(f"| k | images | exact count | localization | colour | undercount | overcount | {clear} "
          f"| least visible px in undercounted images (median) |\n|---|---|---|---|---|---|---|---|---|")
    for k, row in table.items():
        print(f"| {k} | {row['images']} | {row['exact_count']:.1%} | {row['localization']:.1%} | {row['color']:.1%} "
              f"| {row['undercount']:.1%} | {row['overcount']:.1%} | {row['clear_exact_count']:.1%} "
              f"({row['clear_images']}) | {row['least_visible_missed']:g} |")
    if args.json:
        from lcsbench.data.shards import write_json_atomic

        write_json_atomic(Path(args.json), {str(k): v for k, v in table.items()})
    return 0


def check_options(args: argparse.Namespace) -> None:
    """The numeric options, before anything is read: a SystemExit naming the flag and what it takes."""
    from lcsbench.analysis.lengthgen import check_tolerance

    try:
        check_tolerance(args.tolerance_cells)
    except ValueError as error:
        raise SystemExit(f"eval-judge: --tolerance-cells: {error}") from None
    if args.grid_size < 1 or args.batch_size < 1 or args.clear_pixels < 0:
        raise SystemExit(f"eval-judge: need --grid-size >= 1 (cells per side, dividing the resolution; 16 is the "
                         f"paper's), --batch-size >= 1 and --clear-pixels >= 0; found {args.grid_size}, "
                         f"{args.batch_size}, {args.clear_pixels}")


def parse_degradation(parser: argparse.ArgumentParser, text: str) -> tuple[float, float, float]:
    try:
        blur, noise, color = (float(v) for v in text.split(","))
    except ValueError:
        parser.error(f"--degrade takes three numbers BLUR,NOISE,COLOR, e.g. 1.0,0.05,0.03; got {text!r}")
    if not all(math.isfinite(v) and v >= 0 for v in (blur, noise, color)):
        parser.error(f"--degrade levels must be finite and >= 0; got {text!r}")
    return blur, noise, color


def degraded_batches(batches, blur: float, noise: float, color: float, seed: int = 0):
    """The batches with every image degraded at one level (models/judge.degrade), the noise seeded."""
    import torch

    from lcsbench.models.judge import degrade, fixed_degradation

    generator = torch.Generator().manual_seed(seed)
    for batch in batches:
        images = batch["image"]
        yield {**batch, "image": degrade(images, *fixed_degradation(images.shape[0], blur, noise, color), generator)}

