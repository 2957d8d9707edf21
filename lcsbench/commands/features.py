"""`python -m lcsbench features --ckpt C --out DIR`: feature-space cosine matrices of a trained EDM2 model (paper
Eq. 3, Appendix E.4, Figures 5 and 11).

For each of the paper's single conditions (8 colours, or the 12 evaluation locations), the features of every
EDM2 block are captured on noisy images at several noise levels; their mean minus the unconditional mean gives
one difference vector per condition and layer, and their cosine similarities one matrix per layer, one per
resolution and their average over the paper's "feature-space" layers (the first two encoder resolutions, or
--average). The site (--site, analysis/features.py): `modulated` (default), the block's features after the
conditional scale, or `scale`, the scale alone. The images are the model's own samples (one per condition,
cycling), re-noised at each sigma (--images noise: small random images instead).

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

from lcsbench.commands._common import add_model_arguments, heartbeat, load_trained_denoiser, parse_floats

DEFAULT_SIGMAS = "0.1,0.5,2,10"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[float]]:
    """The arguments, checked, and the noise levels."""
    parser = argparse.ArgumentParser(prog="python -m lcsbench features", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, out_help="output folder for features.json and feature_cosines.png")
    parser.add_argument("--sigmas", default=DEFAULT_SIGMAS, help="noise levels averaged over (comma list)")
    parser.add_argument("--samples", type=int, default=8, help="images averaged over per noise level")
    parser.add_argument("--site", choices=("modulated", "scale"), default="modulated",
                        help="feature site: the block's features after the conditional scale, or the scale alone")
    parser.add_argument("--images", choices=("samples", "noise"), default="samples",
                        help="the model's own samples (one per condition, cycling) or small random images")
    parser.add_argument("--sample-steps", type=int, default=32, help="sampler steps for --images samples")
    parser.add_argument("--layers", nargs="*", default=None, metavar="NAME", help="layers to measure (names or "
                        "glob patterns, e.g. 'unet.enc.*'); default: all")
    parser.add_argument("--average", nargs="*", default=None, metavar="NAME",
                        help="layers averaged into the 'feature-space' matrix (default: the first two encoder "
                             "resolutions, as the paper labels it)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the chance level (re-initialised copy)")
    parser.add_argument("--list-layers", action="store_true", help="print the layer names and exit")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.sample_steps < 2:
        raise SystemExit(f"lcsbench features: need --samples >= 1 and --sample-steps >= 2; found {args.samples}, "
                         f"{args.sample_steps}")
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
        averaged = None if args.average is None else resolve_layers(layers, args.average)
    except ValueError as error:
        raise SystemExit(f"lcsbench features: {error}")
    conditions, labels = paper_conditions(denoiser.conditioning, denoiser.grid_size)
    conditions = conditions.to(args.device)
    started = time.perf_counter()
    if args.images == "samples":
        print(f"sampling {args.samples} images, one per condition in turn ({args.sample_steps} steps)...",
              flush=True)
        with heartbeat("features", f"sampling {args.samples} images"):
            images = condition_samples(denoiser, conditions, args.samples, args.sample_steps, args.seed)
    else:
        generator = torch.Generator().manual_seed(args.seed)
        images = (0.2 * torch.randn((args.samples, *denoiser.image_shape), generator=generator)).to(args.device)
    print(f"{len(labels)} {denoiser.conditioning} conditions x {len(sigmas)} sigmas x {args.samples} images on "
          f"{len(layers)} layers ({args.site} site)...", flush=True)

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
               "kind": denoiser.conditioning, "site": args.site, "images": args.images, "sigmas": sigmas,
               "samples": args.samples, "seed": args.seed, "seconds": round(time.perf_counter() - started, 2),
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

