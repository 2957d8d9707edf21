"""`python -m lcsbench locality --ckpt C --out DIR`: pixel and conditional locality of a trained model over noise
levels (paper Figure 2, Figure 10, Appendix F).

Examples:

    python -m lcsbench locality --ckpt runs/exp2/.../last.ckpt --out reports/exp2/locality
    python -m lcsbench locality --ckpt reports/reproduction/cpu/weights/exp1.pt --out DIR --scenes 8 --noise-draws 4

The model draws its own sample for the requested conditioner (EDM Heun sampler, EMA weights by default; the
network, and so its Jacobians, in fp32 unless --precision bf16, which agrees but measured slower on the CPU); the
sample is re-noised at each sigma with `--noise-draws` noise draws; Eq. 9 heat maps at the target pixels (by
default the centres of the conditioned cells), the same for D - c_skip x (the network's part, without the
skip term's spike at the target) and Eq. 10 influence maps of every conditioner are measured and summarised
by their 90% locality radius. With `--scenes N` this is done for N scenes (the first: the paper's first k
locations; the others: random k-subsets of the paper's 12, each with its own sample) and the radii are
averaged over scenes with their spread (Figure 2's evidence). Writes `DIR/locality.json` (settings, radii per
scene, their mean and standard deviation across scenes, influences of the first scene),
`DIR/locality_grid_t{i}.png` (one Figure-2 grid per target), `DIR/locality_radius.png` (Figure 10 curves) and
`DIR/locality_maps.npz`, the first scene's maps for other figures (`reproduce` puts the experiments side by
side): `sigmas [S]`, `sample [C, H, W]` (the model's own sample), `pixels [P, 2]`, `heat [S, P, H, W]` (Eq. 9),
`heat_without_skip [S, P, H, W]` (Eq. 9 of D - c_skip x) and, where measured, `conditioners [J, d]`,
`influence [S, J, H, W]` (Eq. 10), `conditioner_centres [J, 2]` (location models). Pixels are (row, col) from
the top-left corner throughout.

The study itself is `lcsbench.analysis.locality.run` (one call in a notebook); this command reads the flags,
loads the model and writes what the study returns.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from lcsbench.commands._common import (DEFAULT_SIGMAS, CommandParser, Progress, add_model_arguments,
                                      add_precision_argument, check_device, check_output_dir, command_parser,
                                      heartbeat, load_trained_denoiser, memory_budget_option, parse_floats)

RENAMED = {"--samples": "--noise-draws", "--sample-steps": "--steps"}  # old flag -> new (deprecated aliases)


def parse_pixels(texts: list[str]) -> list[tuple[int, int]]:
    pixels = []
    for text in texts:
        match = re.fullmatch(r"\s*(-?[0-9]{1,9})\s*,\s*(-?[0-9]{1,9})\s*", text)  # ASCII digits only
        if match is None:
            raise SystemExit(f"--targets takes pixels as ROW,COL (e.g. 20,41); found {text!r}")
        pixels.append((int(match.group(1)), int(match.group(2))))
    return pixels


def build_parser() -> CommandParser:
    from lcsbench.diffusion.sampler import PAPER_HEUN_STEPS

    parser = command_parser("locality", __doc__)
    add_model_arguments(parser, out_help="output folder for locality.json, locality_maps.npz and the PNGs")
    parser.add_argument("--sigmas", default=DEFAULT_SIGMAS, help="noise levels (comma list)")
    parser.add_argument("--locations", type=int, default=3, help="location models: condition on the first k "
                        "of the paper's 12 locations")
    parser.add_argument("--colors", type=int, default=3, help="colour models: condition on the first k colours")
    parser.add_argument("--targets", nargs="*", default=None, metavar="ROW,COL", help="target pixels (default: "
                        "the centre of each conditioned cell; the image centre for colour models)")
    parser.add_argument("--noise-draws", type=int, default=2, help="noise draws averaged in Eq. 9 and 10")
    parser.add_argument("--scenes", type=int, default=1, help="scenes averaged, each its own conditioner and "
                        "sample (the first: the paper's first k locations; others: random k-subsets); the "
                        "spread across scenes goes beside the mean")
    parser.add_argument("--steps", type=int, default=PAPER_HEUN_STEPS, help="Heun steps of the model's own sample")
    parser.add_argument("--fraction", type=float, default=0.9, help="energy fraction of the locality radius")
    parser.add_argument("--chunk-size", type=int, default=None, help="cotangents per batched backward (default: "
                        "as many as --memory-budget-gib holds)")
    parser.add_argument("--memory-budget-gib", type=float, default=2.0, help="memory per batched backward")
    add_precision_argument(parser, default="fp32")  # bf16 agrees, but its Jacobians measured slower on the CPU
    parser.deprecated_aliases(RENAMED)
    return parser


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[float]]:
    """The arguments, checked, and the noise levels."""
    parser = build_parser()
    args = parser.parse_args(argv)
    sigmas = parse_floats(args.sigmas, "sigmas")
    if args.noise_draws < 1 or args.steps < 2 or args.scenes < 1:
        draws, steps = parser.flag("--noise-draws"), parser.flag("--steps")
        raise SystemExit(f"lcsbench locality: need {draws} >= 1, --scenes >= 1 and {steps} >= 2 (Heun); "
                         f"found {args.noise_draws}, {args.scenes}, {args.steps}")
    if not 0 < args.fraction <= 1:
        raise SystemExit(f"--fraction is the share of the map's energy the radius holds, in (0, 1]; found "
                         f"{args.fraction}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise SystemExit(f"--chunk-size is the number of cotangents per batched backward, >= 1 (leave it out to size "
                         f"batches by --memory-budget-gib); found {args.chunk_size}")
    args.memory_budget = memory_budget_option(args.memory_budget_gib, "--memory-budget-gib", 2.0,
                                              "one batched backward")
    return args, sigmas


def conditioned_objects(denoiser, args: argparse.Namespace) -> int:
    """k of --locations (a location model) or --colors (a colour model), checked against the paper's lists."""
    from lcsbench.data.conditioning import PAPER_COLORS, PAPER_LOCATIONS

    flag, objects, available = ("--locations", args.locations, len(PAPER_LOCATIONS))
    if denoiser.conditioning != "location":
        flag, objects, available = "--colors", args.colors, len(PAPER_COLORS)
    if not 1 <= objects <= available:
        raise SystemExit(f"{flag} must lie in 1..{available} (the paper's list); found {objects}")
    return objects


def main(argv: list[str] | None = None) -> int:
    args, sigmas = parse_args(argv)
    from lcsbench.analysis.locality import check_pixels, run

    targets = parse_pixels(args.targets) if args.targets else None
    out = check_output_dir(args.out)
    check_device(args.device)
    denoiser = load_trained_denoiser(args.ckpt, ema=not args.no_ema, device=args.device, precision=args.precision)
    res = denoiser.image_shape[-1]
    try:
        targets = check_pixels(targets, res, res) if targets else None
    except ValueError as error:
        raise SystemExit(f"lcsbench locality: --targets: {error}")
    objects = conditioned_objects(denoiser, args)
    out.mkdir(parents=True, exist_ok=True)
    started, meter = time.perf_counter(), Progress("locality", args.scenes, unit="scenes")
    with heartbeat("locality", f"{args.scenes} scene(s): samples and Jacobians at {len(sigmas)} noise levels"):
        study = run(denoiser, sigmas, objects, args.scenes, args.noise_draws, args.steps, targets, args.fraction,
                    args.seed, args.chunk_size, args.memory_budget, args.device,
                    progress=lambda done, total: meter.update(done), log=lambda line: print(line, flush=True))
    write_outputs(out, args, study, round(time.perf_counter() - started, 2))
    return 0


def write_outputs(out: Path, args: argparse.Namespace, study, seconds: float) -> None:
    """locality.json, locality_maps.npz (the first scene's maps and sample) and the figures (module docstring)."""
    from lcsbench.analysis.plots import locality_grid, radius_curves, save_figure

    summary = {"command": "locality", "ckpt": str(args.ckpt), "ema": not args.no_ema, "precision": args.precision,
               **study.summary(),
               "seconds": seconds}
    (out / "locality.json").write_text(json.dumps(summary, indent=2))
    profile, described = study.profiles[0], study.conditioned[0]
    maps = profile.maps()  # the first scene's maps, its sample second as before
    np.savez_compressed(out / "locality_maps.npz",
                        **{"sigmas": maps.pop("sigmas"), "sample": study.samples[0].numpy(), **maps})
    name = Path(args.ckpt).parent.parent.name if Path(args.ckpt).name == "last.ckpt" else Path(args.ckpt).stem
    for t, pixel in enumerate(profile.pixels):
        title = f"{name}: {study.kind} {described}, target pixel (row, col) {pixel}"
        save_figure(locality_grid(profile, target=t, title=title), out / f"locality_grid_t{t}.png")
    save_figure(radius_curves(profile, title=f"{name}: {study.kind} {described}", scenes=summary),
                out / "locality_radius.png")
    radii = ", ".join(f"{s:g}: {r:.1f}" for s, r in zip(profile.sigmas, summary["pixel_radius_mean"]) if r is not None)
    print(f"mean pixel radius by sigma over {args.scenes} scene(s): {radii}")
    print(f"wrote {out / 'locality.json'}, locality_maps.npz and {len(profile.pixels) + 1} figures in {seconds} s")
