"""`python -m lcsbench features --ckpt C --out DIR`: feature-space cosine matrices of a trained EDM2 model (paper
Eq. 3, Appendix E.4, Figures 5 and 11).

Examples:

    python -m lcsbench features --ckpt runs/exp1/.../last.ckpt --out reports/exp1/features
    python -m lcsbench features --ckpt runs/color/.../last.ckpt --out DIR --site scale --images-per-sigma 16
    python -m lcsbench features --ckpt runs/exp1/.../last.ckpt --out DIR --list-layers

For each of the paper's single conditions (8 colours, or the 12 evaluation locations), the features of every
EDM2 block are captured on noisy images at several noise levels; their mean minus the unconditional mean gives
one difference vector per condition and layer, and their cosine similarities one matrix per layer, one per
resolution and their average over the paper's "feature-space" layers (the first two encoder resolutions, or
--feature-layers). The site (--site, analysis/features.py): `modulated` (default), the block's features after the
conditional scale, or `scale`, the scale alone. The images are the model's own samples (one per condition,
cycling), re-noised at each sigma (--image-source noise: small random images instead).

Beside the model, the same measurement on a re-initialised copy (weights re-drawn, gains kept) gives the
chance level: a random network also maps one-hot conditions to near-orthogonal directions, so only a model
well below its chance level reads as disentangled. Writes `DIR/features.json` and `DIR/feature_cosines.png`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lcsbench.commands._common import (CommandParser, add_model_arguments, command_parser, heartbeat,
                                      load_trained_denoiser, parse_floats)

DEFAULT_SIGMAS = "0.1,0.5,2,10"


RENAMED = {"--samples": "--images-per-sigma", "--images": "--image-source", "--sample-steps": "--steps",
           "--average": "--feature-layers"}  # old flag -> new (deprecated aliases)


def build_parser() -> CommandParser:
    from lcsbench.diffusion.sampler import PAPER_HEUN_STEPS

    parser = command_parser("features", __doc__)
    add_model_arguments(parser, out_help="output folder for features.json and feature_cosines.png")
    parser.add_argument("--sigmas", default=DEFAULT_SIGMAS, help="noise levels averaged over (comma list)")
    parser.add_argument("--images-per-sigma", type=int, default=8, help="images averaged over per noise level")
    parser.add_argument("--site", choices=("modulated", "scale"), default="modulated",
                        help="feature site: the block's features after the conditional scale, or the scale alone")
    parser.add_argument("--image-source", choices=("samples", "noise"), default="samples",
                        help="the model's own samples (one per condition, cycling) or small random images")
    parser.add_argument("--steps", type=int, default=PAPER_HEUN_STEPS, help="Heun steps of the model's own samples")
    parser.add_argument("--layers", nargs="*", default=None, metavar="NAME", help="layers to measure (names or "
                        "glob patterns, e.g. 'unet.enc.*'; default: all)")
    parser.add_argument("--feature-layers", nargs="*", default=None, metavar="NAME",
                        help="layers averaged into the 'feature-space' matrix (default: the first two encoder "
                             "resolutions, as the paper labels it)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the chance level (re-initialised copy)")
    parser.add_argument("--list-layers", action="store_true", help="print the layer names and exit")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward")
    parser.deprecated_aliases(RENAMED)
    return parser


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[float]]:
    """The arguments, checked, and the noise levels."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.images_per_sigma < 1 or args.steps < 2:
        raise SystemExit(f"lcsbench features: need {parser.flag('--images-per-sigma')} >= 1 and "
                         f"{parser.flag('--steps')} >= 2; found {args.images_per_sigma}, {args.steps}")
    sigmas = parse_floats(args.sigmas, "sigmas")
    return args, sigmas


def main(argv: list[str] | None = None) -> int:
    args, sigmas = parse_args(argv)
    from lcsbench.analysis.features import (chance_level, condition_samples, feature_cosines, feature_layers,
                                            mean_difference_vectors, paper_conditions, resolve_layers)
    from lcsbench.analysis.plots import cosine_matrices, save_figure

    denoiser = load_trained_denoiser(args.ckpt, ema=not args.no_ema, device=args.device)
    names = list(feature_layers(denoiser.network, args.site))
    if args.list_layers:
        print("\n".join(names))
        return 0
    try:
        layers = resolve_layers(names, args.layers)
        averaged = None if args.feature_layers is None else resolve_layers(layers, args.feature_layers)
    except ValueError as error:
        raise SystemExit(f"lcsbench features: {error}")
    conditions, labels = paper_conditions(denoiser.conditioning, denoiser.grid_size)
    conditions = conditions.to(args.device)
    started = time.perf_counter()
    if args.image_source == "samples":
        print(f"sampling {args.images_per_sigma} images, one per condition in turn ({args.steps} steps)...",
              flush=True)
        with heartbeat("features", f"sampling {args.images_per_sigma} images"):
            images = condition_samples(denoiser, conditions, args.images_per_sigma, args.steps, args.seed)
    else:
        generator = torch.Generator().manual_seed(args.seed)
        images = 0.2 * torch.randn((args.images_per_sigma, *denoiser.image_shape), generator=generator)
        images = images.to(args.device)
    print(f"{len(labels)} {denoiser.conditioning} conditions x {len(sigmas)} sigmas x {args.images_per_sigma} images "
          f"on {len(layers)} layers ({args.site} site)...", flush=True)

    def measure(what: str):
        print(f"features: {what} ({time.perf_counter() - started:.0f} s so far)", flush=True)
        with heartbeat("features", what):
            vectors = mean_difference_vectors(denoiser, images, sigmas, conditions, layers=layers,
                                              network=denoiser.network, seed=args.seed + 1,
                                              batch_size=args.batch_size, site=args.site)
        return feature_cosines(vectors, labels, averaged)

    cosines = measure("the trained network's feature differences")
    baseline = None if args.no_baseline else chance_level(  # the same measurement through re-drawn weights
        denoiser, lambda: measure("the chance baseline: the same through re-drawn weights"), seed=args.seed).summary()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"command": "features", "ckpt": str(args.ckpt), "ema": not args.no_ema,
               "kind": denoiser.conditioning, "site": args.site, "images": args.image_source, "sigmas": sigmas,
               "samples": args.images_per_sigma, "seed": args.seed, "seconds": round(time.perf_counter() - started, 2),
               **cosines.summary(),
               "baseline": None if baseline is None else {
                   key: baseline[key] for key in ("average_mean_abs_off_diagonal",
                                                  "per_resolution_mean_abs_off_diagonal", "average")}}
    (out / "features.json").write_text(json.dumps(summary, indent=2))
    save_figure(cosine_matrices(cosines, title=f"{Path(args.ckpt).name}: cosine of mean difference vectors"),
                out / "feature_cosines.png")
    chance = "" if baseline is None else f" (chance level: {baseline['average_mean_abs_off_diagonal']})"
    print(f"mean |cosine| off the diagonal, feature-space layers: {summary['average_mean_abs_off_diagonal']}"
          f"{chance}")
    print(f"wrote {out / 'features.json'} and {out / 'feature_cosines.png'} in {summary['seconds']} s")
    return 0

