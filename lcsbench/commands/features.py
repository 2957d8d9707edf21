"""`python -m lcsbench features --ckpt C --out DIR`: feature-space cosine matrices of a trained EDM2 model (paper
Eq. 3, Appendix E.4, Figures 5 and 11).

For each of the paper's single conditions (8 colours, or the 12 evaluation locations), the per-block
conditioning modulation (`emb_linear`, the paper's "MCScale" layers) is captured on noisy images at several
noise levels; its mean minus the unconditional mean gives one difference vector per condition and layer, and
their cosine similarities one matrix per layer, plus the average over `--average` layers (the paper's
"feature-space" panel: the early encoder layers). Writes `DIR/features.json` and `DIR/feature_cosines.png`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lcsbench.commands._common import add_model_arguments, load_analysis_model, parse_floats

DEFAULT_SIGMAS = "0.1,0.5,2,10"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lcsbench features", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, out_help="output folder for features.json and feature_cosines.png")
    parser.add_argument("--sigmas", default=DEFAULT_SIGMAS, help="noise levels averaged over (comma list)")
    parser.add_argument("--samples", type=int, default=4, help="noisy images per noise level")
    parser.add_argument("--layers", nargs="*", default=None, metavar="NAME", help="modulation layers to measure "
                        "(names or glob patterns, e.g. 'unet.enc.*'); default: all")
    parser.add_argument("--average", nargs="*", default=["unet.enc.*"], metavar="NAME",
                        help="layers averaged into the 'feature-space' matrix (default: the encoder)")
    parser.add_argument("--list-layers", action="store_true", help="print the layer names and exit")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward")
    args = parser.parse_args(argv)

    from lcsbench.analysis.features import (feature_cosines, mean_difference_vectors, modulation_layers,
                                            paper_conditions, resolve_layers)
    from lcsbench.analysis.plots import cosine_matrices, save_figure

    sigmas = parse_floats(args.sigmas, "sigmas")
    model = load_analysis_model(args.ckpt, ema=not args.no_ema, device=args.device)
    names = list(modulation_layers(model.network))
    if args.list_layers:
        print("\n".join(names))
        return 0
    try:
        layers = resolve_layers(names, args.layers)
        averaged = resolve_layers(layers, args.average)
    except ValueError as error:
        raise SystemExit(f"lcsbench features: {error}")
    conditions, labels = paper_conditions(model.kind, model.grid_size)
    started = time.perf_counter()
    # Noisy inputs around a grey image: the modulation depends on sigma and the label, x only sets the scale.
    generator = torch.Generator().manual_seed(args.seed)
    images = (0.2 * torch.randn(args.samples, model.channels, model.resolution, model.resolution,
                                generator=generator)).to(args.device)
    print(f"{len(labels)} {model.kind} conditions x {len(sigmas)} sigmas x {args.samples} samples on "
          f"{len(layers)} layers...", flush=True)
    vectors = mean_difference_vectors(model.denoiser, images, sigmas, conditions.to(args.device), layers=layers,
                                      network=model.network, seed=args.seed + 1, batch_size=args.batch_size)
    cosines = feature_cosines(vectors, labels, averaged)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"command": "features", "ckpt": str(args.ckpt), "ema": not args.no_ema, "kind": model.kind,
               "sigmas": sigmas, "samples": args.samples, "seed": args.seed,
               "seconds": round(time.perf_counter() - started, 2), **cosines.summary()}
    (out / "features.json").write_text(json.dumps(summary, indent=2))
    save_figure(cosine_matrices(cosines, title=f"{Path(args.ckpt).name}: cosine of mean difference vectors"),
                out / "feature_cosines.png")
    print(f"mean |cosine| off the diagonal, averaged layers: {summary['average_mean_abs_off_diagonal']}")
    print(f"wrote {out / 'features.json'} and {out / 'feature_cosines.png'} in {summary['seconds']} s")
    return 0

