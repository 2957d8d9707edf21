"""`python -m lcsbench locality --ckpt C --out DIR`: pixel and conditional locality of a trained model over noise
levels (paper Figure 2, Figure 10, Appendix F).

The model draws its own sample for the requested conditioner (EDM Heun sampler, EMA weights by default); the
sample is re-noised at each sigma with `--samples` noise draws; Eq. 9 heat maps at the target pixels (by
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
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lcsbench.commands._common import (DEFAULT_SIGMAS, Progress, add_model_arguments, check_device,
                                      check_output_dir, heartbeat, load_trained_denoiser, parse_floats)


def parse_pixels(texts: list[str]) -> list[tuple[int, int]]:
    pixels = []
    for text in texts:
        match = re.fullmatch(r"\s*(-?[0-9]{1,9})\s*,\s*(-?[0-9]{1,9})\s*", text)  # ASCII digits only
        if match is None:
            raise SystemExit(f"--targets takes pixels as ROW,COL (e.g. 20,41); found {text!r}")
        pixels.append((int(match.group(1)), int(match.group(2))))
    return pixels


def build_conditioner(denoiser, locations: int, colors: int, scene: int = 0,
                      seed: int = 0) -> tuple[Tensor, list[str]]:
    """The conditioner for one scene: the first k paper locations (scene 0) or a random k-subset of them (other
    scenes, seeded by seed and scene), or the first k colours; and their descriptions."""
    from lcsbench.data.conditioning import (PAPER_COLORS, PAPER_LOCATIONS, counts_from_colors,
                                            grid_from_locations)

    if denoiser.conditioning == "location":
        if not 1 <= locations <= len(PAPER_LOCATIONS):
            raise SystemExit(f"--locations must lie in 1..{len(PAPER_LOCATIONS)} (the paper's list); "
                             f"found {locations}")
        chosen = PAPER_LOCATIONS[:locations]
        if scene > 0:
            from lcsbench.analysis.lengthgen import requested_locations

            chosen = requested_locations(locations, "random", torch.Generator().manual_seed(seed * 1000 + scene))
        return grid_from_locations(chosen, denoiser.grid_size), [f"{x:.2f},{y:.2f}" for x, y in chosen]
    if not 1 <= colors <= len(PAPER_COLORS):
        raise SystemExit(f"--colors must lie in 1..{len(PAPER_COLORS)}; found {colors}")
    chosen = PAPER_COLORS[:colors]
    return counts_from_colors(chosen), list(chosen)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[float]]:
    """The arguments, checked, and the noise levels."""
    parser = argparse.ArgumentParser(prog="python -m lcsbench locality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, out_help="output folder for locality.json and the PNGs")
    parser.add_argument("--sigmas", default=DEFAULT_SIGMAS, help="noise levels (comma list)")
    parser.add_argument("--locations", type=int, default=3, help="location models: condition on the first k "
                        "of the paper's 12 locations")
    parser.add_argument("--colors", type=int, default=3, help="colour models: condition on the first k colours")
    parser.add_argument("--targets", nargs="*", default=None, metavar="ROW,COL", help="target pixels (default: "
                        "the centre of each conditioned cell; the image centre for colour models)")
    parser.add_argument("--samples", type=int, default=2, help="noise draws averaged in Eq. 9 and 10")
    parser.add_argument("--scenes", type=int, default=1, help="scenes averaged, each its own conditioner and "
                        "sample (the first: the paper's first k locations; others: random k-subsets); the "
                        "spread across scenes goes beside the mean (default 1)")
    parser.add_argument("--sample-steps", type=int, default=32, help="sampler steps for the model's own sample")
    parser.add_argument("--fraction", type=float, default=0.9, help="energy fraction of the locality radius")
    parser.add_argument("--chunk-size", type=int, default=None, help="cotangents per batched backward")
    parser.add_argument("--memory-budget-gib", type=float, default=2.0, help="memory per batched backward")
    args = parser.parse_args(argv)
    sigmas = parse_floats(args.sigmas, "sigmas")
    if args.samples < 1 or args.sample_steps < 2 or args.scenes < 1:
        raise SystemExit(f"lcsbench locality: need --samples >= 1, --scenes >= 1 and --sample-steps >= 2 (Heun); "
                         f"found {args.samples}, {args.scenes}, {args.sample_steps}")
    if not 0 < args.fraction <= 1:
        raise SystemExit(f"--fraction is the share of the map's energy the radius holds, in (0, 1]; found "
                         f"{args.fraction}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise SystemExit(f"--chunk-size is the number of cotangents per batched backward, >= 1 (leave it out to size "
                         f"batches by --memory-budget-gib); found {args.chunk_size}")
    if not (math.isfinite(args.memory_budget_gib) and args.memory_budget_gib > 0):
        raise SystemExit(f"--memory-budget-gib is the memory one batched backward may use, a positive number of GiB "
                         f"(default 2); found {args.memory_budget_gib}")
    return args, sigmas


def main(argv: list[str] | None = None) -> int:
    args, sigmas = parse_args(argv)
    from lcsbench.analysis.locality import check_pixels, locality_profile, locality_targets
    from lcsbench.analysis.plots import locality_grid, radius_curves, save_figure

    fixed_targets = parse_pixels(args.targets) if args.targets else None
    out = check_output_dir(args.out)
    check_device(args.device)
    denoiser = load_trained_denoiser(args.ckpt, ema=not args.no_ema, device=args.device)
    res = denoiser.image_shape[-1]
    out.mkdir(parents=True, exist_ok=True)

    from lcsbench.analysis.locality import scenes_summary
    from lcsbench.diffusion.sampler import edm_sampler

    started = time.perf_counter()
    profiles, scenes = [], []
    progress = Progress("locality", args.scenes, unit="scenes")
    for scene in range(args.scenes):
        cond_one, described = build_conditioner(denoiser, args.locations, args.colors, scene, args.seed)
        cond = cond_one[None].repeat(args.samples, *([1] * cond_one.ndim)).to(args.device)
        targets, centres = locality_targets(denoiser, cond_one)  # the conditioned cells' centres, or the middle
        try:
            targets = check_pixels(fixed_targets or targets, res, res)
        except ValueError as error:
            raise SystemExit(f"lcsbench locality: --targets: {error}")
        generator = torch.Generator().manual_seed(args.seed + 7919 * scene)
        noise = torch.randn(1, *denoiser.image_shape, generator=generator).to(args.device)
        print(f"scene {scene + 1}/{args.scenes}: sampling one {res}x{res} image for {denoiser.conditioning} "
              f"{described} ({args.sample_steps} steps), then {len(targets)} target pixels x {len(sigmas)} noise "
              f"levels x {args.samples} noise draws ({time.perf_counter() - started:.0f} s so far)", flush=True)
        with torch.no_grad():
            sample = edm_sampler(denoiser, noise, cond[:1], num_steps=args.sample_steps).clamp(-1, 1)
        images = sample.repeat(args.samples, 1, 1, 1)
        with heartbeat("locality", f"scene {scene + 1}/{args.scenes}: Jacobians at {len(sigmas)} noise levels"):
            profiles.append(locality_profile(denoiser, images, cond, sigmas, targets, conditioner_centres=centres,
                                             fraction=args.fraction, seed=args.seed + 1 + scene,
                                             chunk_size=args.chunk_size,
                                             memory_budget=int(args.memory_budget_gib * 2**30), skip_removed=True))
        progress.update(scene + 1)
        scenes.append({"conditioned": described, "sample": sample[0].float().cpu().numpy()})
    profile = profiles[0]
    described = scenes[0]["conditioned"]
    summary = {
        "command": "locality", "ckpt": str(args.ckpt), "ema": not args.no_ema, "kind": denoiser.conditioning,
        "conditioned": described, "resolution": res, "samples": args.samples, "noise_draws": args.samples,
        "seed": args.seed, "seconds": round(time.perf_counter() - started, 2), **profile.summary(),
        **scenes_summary(profiles), "scene_conditioned": [scene["conditioned"] for scene in scenes],
        "pixel_convention": "(row, col) from the top-left corner",
    }
    if denoiser.conditioning == "color":  # name the ablated colour slots (conditioning.py's COLOR_NAMES order)
        from lcsbench.data.scenes import COLOR_NAMES

        summary["conditioner_names"] = [COLOR_NAMES[index[0]] for index in profile.conditioners]
    (out / "locality.json").write_text(json.dumps(summary, indent=2))
    maps = profile.maps()  # the first scene's maps, its sample second as before
    np.savez_compressed(out / "locality_maps.npz",
                        **{"sigmas": maps.pop("sigmas"), "sample": scenes[0]["sample"], **maps})
    name = Path(args.ckpt).parent.parent.name if Path(args.ckpt).name == "last.ckpt" else Path(args.ckpt).stem
    for t, pixel in enumerate(profile.pixels):
        title = f"{name}: {denoiser.conditioning} {described}, target pixel (row, col) {pixel}"
        save_figure(locality_grid(profile, target=t, title=title),
                    out / f"locality_grid_t{t}.png")
    save_figure(radius_curves(profile, title=f"{name}: {denoiser.conditioning} {described}", scenes=summary),
                out / "locality_radius.png")
    radii = ", ".join(f"{s:g}: {r:.1f}" for s, r in zip(profile.sigmas, summary["pixel_radius_mean"]) if r is not None)
    print(f"mean pixel radius by sigma over {args.scenes} scene(s): {radii}")
    print(f"wrote {out / 'locality.json'}, locality_maps.npz and {len(profile.pixels) + 1} figures in "
          f"{summary['seconds']} s")
    return 0

