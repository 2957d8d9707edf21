"""`python -m lcsbench sample`: draw images from a trained model for one conditioner and save a PNG grid.

Examples:

    python -m lcsbench sample --ckpt runs/exp1/.../last.ckpt --locations 0.25,0.65 0.65,0.25 --n 16 --out grid.png
    python -m lcsbench sample --ckpt runs/exp1/.../last.ckpt --locations paper:6 --out six.png
    python -m lcsbench sample --ckpt runs/color/.../last.ckpt --colors red red blue --out rrb.png

Locations are (x, y) fractions of the image (x = column, y = row; conditioning.grid_from_locations), or
`paper:K` for the first K of the paper's 12 evaluation locations; colours are CLEVR colour names, or `paper:K`.
Sampling is the paper's: EDM Heun, 32 steps, raw conditional denoiser (no guidance), EMA weights by default; the
network runs in bf16 autocast unless --precision fp32.
The grid shows each sample enlarged to at least 96 px (nearest neighbour) with the requested location cells
outlined in lime; the settings file says so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lcsbench.commands._common import (CommandParser, Progress, add_precision_argument, apply_precision, check_device,
                                      check_output_file, command_parser, default_device)

RENAMED = {"--batch": "--batch-size"}  # old flag -> new (deprecated alias)


def paper_count(item: str, option: str, available: int) -> int:
    """K of `paper:K`, or a SystemExit that says what was expected."""
    text = item.split(":", 1)[1]
    if not re.fullmatch(r"[0-9]{1,3}", text) or not 0 <= int(text) <= available:  # ASCII digits ("²" is a digit)
        raise SystemExit(f"{option} paper:K takes a whole number K in 0..{available} (the paper's list); found "
                         f"{item!r}")
    return int(text)


def parse_locations(items: list[str]) -> list[tuple[float, float]]:
    from lcsbench.data.conditioning import PAPER_LOCATIONS

    if len(items) == 1 and items[0].startswith("paper:"):
        return list(PAPER_LOCATIONS[:paper_count(items[0], "--locations", len(PAPER_LOCATIONS))])
    locations = []
    for item in items:
        parts = item.split(",")
        try:
            x, y = (float(p) for p in parts)
        except ValueError:
            raise SystemExit(f"--locations takes X,Y fractions of the image in [0, 1] (e.g. 0.25,0.65) or paper:K; "
                             f"found {item!r}") from None
        if not (0 <= x <= 1 and 0 <= y <= 1):
            raise SystemExit(f"--locations takes fractions in [0, 1]; found {item!r}")
        locations.append((x, y))
    return locations


def parse_colors(items: list[str]) -> list[str]:
    from lcsbench.data.conditioning import PAPER_COLORS
    from lcsbench.data.scenes import COLOR_NAMES

    if len(items) == 1 and items[0].startswith("paper:"):
        return list(PAPER_COLORS[: paper_count(items[0], "--colors", len(PAPER_COLORS))])
    names = [name for item in items for name in item.split(",") if name]
    unknown = [n for n in names if n not in COLOR_NAMES]
    if unknown:
        raise SystemExit(f"--colors takes CLEVR colour names {list(COLOR_NAMES)}; found {unknown}")
    return names


def build_parser() -> CommandParser:
    from lcsbench.diffusion.sampler import PAPER_HEUN_STEPS

    parser = command_parser("sample", __doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint from `fit`, or an EMA file from `reconstruct-ema`")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--locations", nargs="+", metavar="X,Y", help="object locations (location models)")
    which.add_argument("--colors", nargs="+", metavar="COLOR", help="object colours (colour models)")
    parser.add_argument("--n", type=int, default=16, help="number of samples")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="the PNG grid to write (its settings go beside it, FILE with .json)")
    parser.add_argument("--steps", type=int, default=PAPER_HEUN_STEPS,
                        help="Heun steps (N steps: 2N - 1 network evaluations; the paper's: 32)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--sigma-rel", type=float, default=None, help="tracked EMA to use (default: the first)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw training weights")
    parser.add_argument("--batch-size", type=int, default=64, help="images per denoiser batch")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    add_precision_argument(parser)
    parser.deprecated_aliases(RENAMED)
    return parser


def parse_args(argv: list[str]):
    """The arguments, checked before any work: the PNG to write, its settings file, the counts."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if Path(args.out).suffix.lower() != ".png":
        raise SystemExit(f"--out is the PNG grid to write (e.g. grid.png); found {args.out!r}")
    if args.n < 1 or args.steps < 2 or args.batch_size < 1:
        raise SystemExit(f"need --n >= 1, --steps >= 2, {parser.flag('--batch-size')} >= 1; found {args.n}, "
                         f"{args.steps}, {args.batch_size}")
    check_output_file(args.out)  # before sampling: an unwritable --out must not cost the samples
    check_output_file(Path(args.out).with_suffix(".json"), "--out (its settings file)")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = Path(args.out)

    import torch
    from PIL import Image

    from lcsbench.analysis.plots import image_grid, outline_cells, upscale
    from lcsbench.data.conditioning import counts_from_colors, grid_from_locations
    from lcsbench.diffusion.sampler import edm_sampler
    from lcsbench.models.loaders import load_denoiser

    requested = parse_locations(args.locations) if args.locations else parse_colors(args.colors)
    device = check_device(args.device or default_device())
    try:
        module = load_denoiser(args.ckpt, ema=not args.no_ema, sigma_rel=args.sigma_rel, map_location=device)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"sample: {error}") from None
    module = apply_precision(module, args.precision).to(device)
    kind = module.conditioning
    if args.locations and kind != "location" or args.colors and kind != "color":
        given = "--locations" if args.locations else "--colors"
        raise SystemExit(f"{args.ckpt} is a {kind}-conditioned model but {given} was given: use "
                         f"{'--locations' if kind == 'location' else '--colors'}")
    cond = grid_from_locations(requested, module.grid_size) if kind == "location" else counts_from_colors(requested)

    denoiser = module.denoiser
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn((args.n, *denoiser.image_shape), generator=generator)
    samples = []
    progress = Progress("sample", args.n)
    for start in range(0, args.n, args.batch_size):
        chunk = noise[start:start + args.batch_size].to(device)
        conds = cond.unsqueeze(0).expand(chunk.shape[0], *cond.shape).to(device)
        samples.append(edm_sampler(denoiser, chunk, conds, num_steps=args.steps).cpu())
        progress.update(min(start + args.batch_size, args.n))
    samples = upscale(torch.cat(samples))
    grid = image_grid(outline_cells(samples, cond[None]) if kind == "location" else samples)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.numpy()).save(out)
    settings = {"command": "sample", "ckpt": str(args.ckpt), "ema": not args.no_ema, "sigma_rel": args.sigma_rel,
                "conditioning": kind, "requested": requested, "n": args.n, "steps": args.steps, "seed": args.seed,
                "precision": args.precision,
                "figure": "samples enlarged to >= 96 px by nearest neighbour" + (
                    "; the requested grid cells outlined in lime" if kind == "location" else "")}
    out.with_suffix(".json").write_text(json.dumps(settings, indent=2))
    print(f"sample: wrote {out} ({args.n} samples) and {out.with_suffix('.json')}")
    return 0
