"""`python -m lcsbench eval-judge`: judge accuracy per object count on held-out renders (exact-count,
localization and colour rates).

    python -m lcsbench eval-judge --judge runs/judge/lightning_logs/version_0/checkpoints/last.ckpt --data data/judge64

Without --judge, the judge shipped with lcsbench for the data's resolution is measured (lcsbench/weights/).
Reads the `val` shards of every object count in DATA's manifest (images the judge never trained on, when it was
fitted on the `train` shards of the same render, or a separate render). Goal: exact count >= 95% for k = 1..12.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lcsbench eval-judge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", default=None, help="judge checkpoint (fit --config configs/judge.yaml); default: "
                                                      "the judge shipped for the data's resolution")
    parser.add_argument("--data", required=True, help="rendered dataset root with val shards")
    parser.add_argument("--counts", default=None, help="object counts to evaluate, e.g. 1-12 (default: all)")
    parser.add_argument("--tolerance-cells", type=float, default=1.0, help="localization tolerance in grid cells")
    parser.add_argument("--grid-size", type=int, default=16, help="conditioning grid G")
    parser.add_argument("--clear-pixels", type=int, default=20,
                        help="also report exact count on images whose every object shows at least this many pixels")
    parser.add_argument("--degrade", default=None, metavar="BLUR,NOISE,COLOR",
                        help="judge degraded renders: Gaussian blur sigma (px), noise std and colour shift applied "
                             "to every image, e.g. 1.0,0.05,0.03 (what a diffusion sample looks like)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the table to this JSON file")
    args = parser.parse_args(argv)
    levels = parse_degradation(parser, args.degrade) if args.degrade else None

    import torch

    from lcsbench.data.datamodule import CLEVRDataModule
    from lcsbench.data.shards import load_manifest
    from lcsbench.models.judge import judge_accuracy, load_judge

    torch.set_grad_enabled(False)
    try:
        manifest = load_manifest(Path(args.data))
        judge = load_judge(args.judge, resolution=manifest.get("settings", {}).get("resolution", 64))
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"eval-judge: {error}") from None
    counts = args.counts
    if counts is None:
        groups = manifest.get("shards", {})
        counts = sorted(int(g[1:]) for g, splits in groups.items() if splits.get("val"))
    data = CLEVRDataModule(args.data, counts=counts, batch_size=args.batch_size, num_workers=0,
                           grid_size=args.grid_size, resolution=judge.resolution)
    batches = data.val_dataloader()
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
        Path(args.json).write_text(json.dumps({str(k): v for k, v in table.items()}, indent=2))
    return 0


def parse_degradation(parser: argparse.ArgumentParser, text: str) -> tuple[float, float, float]:
    try:
        blur, noise, color = (float(v) for v in text.split(","))
    except ValueError:
        parser.error(f"--degrade takes three numbers BLUR,NOISE,COLOR, e.g. 1.0,0.05,0.03; got {text!r}")
    if not all(0 <= v < float("inf") for v in (blur, noise, color)):
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

