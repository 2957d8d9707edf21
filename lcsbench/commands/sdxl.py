"""`python -m lcsbench sdxl`: the paper's SDXL analyses (Section 4, Appendix G) on a local SDXL pipeline folder:
'locality' = pixel Jacobian and word ablation in the VAE latent along a 50-step Euler run (Figure 6); 'attention' =
cross-attention maps at concept tokens, Eq. 3 cosine matrices across prompts and the compositional analysis
(Figures 7, 13). The model is a local diffusers folder: no downloads.

Examples:

    python -m lcsbench sdxl --model sdxl-base --analysis locality --out reports/sdxl   # Figure 6
    python -m lcsbench sdxl --model sdxl-base --analysis attention --out reports/sdxl  # Figures 7, 13
    python -m lcsbench sdxl --model sdxl-base --analysis attention --out DIR --samples-per-prompt 4 --steps 15

Writes OUT/<analysis>.json (numbers), OUT/<analysis>_config.json (the arguments), PNG figures, and for the
attention study OUT/attention_maps.pt (the captured mean maps, for further analysis).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lcsbench.commands._common import CommandParser, command_parser, default_device

RENAMED = {"--num-steps": "--steps", "--samples": "--samples-per-prompt"}  # old flag -> new (deprecated)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected integers like '1,7,15'; found {text!r}") from error


def _pixels(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(v) for v in part.split(",")) for part in text.split(";") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"pixels are 'row,col;row,col' latent pixels; found {text!r}") from error
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"pixels are 'row,col;row,col' latent pixels; found {text!r}")
    return pairs


def build_parser() -> CommandParser:
    from lcsbench.analysis.sdxl.prompts import LOCALITY_PROMPT
    from lcsbench.analysis.sdxl.studies import ATTENTION_STEPS, LOCALITY_STEPS

    parser = command_parser("sdxl", __doc__)
    parser.add_argument("--model", required=True,
                        help="local SDXL pipeline folder (e.g. stabilityai/stable-diffusion-xl-base-1.0 downloaded "
                             "elsewhere with `hf download ... --local-dir DIR`)")
    parser.add_argument("--analysis", required=True, choices=("locality", "attention"), help="which study")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                        help="weights dtype (default: float16 on cuda, float32 on cpu)")
    parser.add_argument("--seed", type=int, default=0, help="initial-noise seed")
    parser.add_argument("--height", type=int, default=None, help="image height in pixels (default: native)")
    parser.add_argument("--width", type=int, default=None, help="image width in pixels (default: native)")
    parser.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance weight")
    parser.add_argument("--steps", dest="num_steps", metavar="STEPS", type=int, default=None,  # dest: the config key
                        help="Euler steps of the run (default: 50 for locality, 15 for attention)")
    loc = parser.add_argument_group("locality (Figure 6)")
    loc.add_argument("--prompt", default=LOCALITY_PROMPT, help="prompt with implicit locations")
    loc.add_argument("--stop-steps", type=_int_list, default=list(LOCALITY_STEPS),
                     help="1-based steps at which the state is analysed")
    loc.add_argument("--pixels", type=_pixels, default=None,
                     help="target latent pixels 'row,col;row,col' (default: left, middle, right at mid-height)")
    loc.add_argument("--words", nargs="+", default=None, help="words to ablate (default: all non-stop words)")
    loc.add_argument("--fraction", type=float, default=0.9, help="energy share of the locality radius")
    att = parser.add_argument_group("attention (Figures 7, 13)")
    att.add_argument("--concept-prompt", action="append", default=None, metavar="LABEL=TEXT|WORD,...",
                     help="a prompt of the study, repeatable; 'label=' is the unconditional prompt "
                          "(default: the paper's 12 prompts)")
    att.add_argument("--capture-steps", type=_int_list, default=list(ATTENTION_STEPS),
                     help="1-based steps whose attention maps are captured")
    att.add_argument("--layers", nargs="+", default=["down", "mid", "up"],
                     help="cross-attention layers: groups down/mid/up/all or exact layer names")
    att.add_argument("--feature-layers", nargs="+", default=None,
                     help="layers averaged into the 'feature_space' panel (default: the first 5 mid-block layers)")
    att.add_argument("--samples-per-prompt", dest="samples", metavar="N", type=int, default=10,  # dest: config key
                     help="samples per prompt")
    att.add_argument("--batch-size", type=int, default=5, help="samples per pipeline call")
    att.add_argument("--device-budget-mb", type=float, default=512,
                     help="MiB of captured maps kept on the accelerator; beyond it maps are accumulated on CPU")
    parser.deprecated_aliases(RENAMED)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from lcsbench.models.sdxl import NotAPipelineError, load_sdxl_pipeline

    device = args.device or default_device()
    dtype_name = args.dtype or ("float16" if device.startswith("cuda") else "float32")
    out = Path(args.out)
    try:
        pipe = load_sdxl_pipeline(args.model, device=device, dtype=getattr(torch, dtype_name))
    except (NotAPipelineError, ImportError) as error:
        print(f"lcsbench sdxl: error: {error}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    config = {key: value for key, value in vars(args).items()} | {"device": device, "dtype": dtype_name}
    (out / f"{args.analysis}_config.json").write_text(json.dumps(config, indent=2, default=str))
    start = time.perf_counter()
    try:
        summary = run_locality(pipe, args, out) if args.analysis == "locality" else run_attention(pipe, args, out)
    except (ValueError, KeyError, TypeError) as error:
        print(f"lcsbench sdxl: error: {error}", file=sys.stderr)
        return 1
    summary["seconds"] = round(time.perf_counter() - start, 2)
    (out / f"{args.analysis}.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out / (args.analysis + '.json')} in {summary['seconds']} s")
    return 0


def run_locality(pipe, args, out: Path) -> dict:
    import matplotlib.pyplot as plt

    from lcsbench.analysis.sdxl.plots import locality_figure, word_influence_figure
    from lcsbench.analysis.sdxl.studies import locality_study
    from lcsbench.models.sdxl import SDXLDenoiser

    study = locality_study(pipe, SDXLDenoiser, prompt=args.prompt, stop_steps=args.stop_steps,
                           num_inference_steps=args.num_steps or 50, guidance_scale=args.guidance_scale,
                           seed=args.seed, pixels=args.pixels, words=args.words, height=args.height,
                           width=args.width, fraction=args.fraction)
    for name, fig in (("locality", locality_figure(study)), ("word_influence", word_influence_figure(study))):
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)
    _save_image(study.final_image, out / "locality_sample.png")
    return study.summary()


def run_attention(pipe, args, out: Path) -> dict:
    import matplotlib.pyplot as plt

    from lcsbench.analysis.sdxl.attention import resolve_layers
    from lcsbench.analysis.sdxl.plots import (composition_figure, cosine_groups_figure, cosine_layers_figure)
    from lcsbench.analysis.sdxl.prompts import ATTENTION_PROMPTS, parse_concept_prompt
    from lcsbench.analysis.sdxl.studies import attention_study
    from lcsbench.checkpoints import save_atomic

    prompts = [parse_concept_prompt(s) for s in args.concept_prompt] if args.concept_prompt else ATTENTION_PROMPTS
    layers = resolve_layers(pipe.unet, args.layers)  # fails before any sampling on a bad name
    feature_layers = resolve_layers(pipe.unet, args.feature_layers) if args.feature_layers else \
        [name for name in layers if name.startswith("mid_block.")][:5]
    study = attention_study(pipe, prompts=prompts, layers=layers, steps=args.capture_steps,
                            num_inference_steps=args.num_steps or 15, samples=args.samples,
                            batch_size=args.batch_size, guidance_scale=args.guidance_scale, seed=args.seed,
                            height=args.height, width=args.width,
                            device_budget=int(args.device_budget_mb * 2**20))
    analysis = study.analysis(feature_layers)
    figures = [("cosine_groups", cosine_groups_figure(study, analysis))]
    figures += [(f"cosine_layers_step{step}", cosine_layers_figure(study, analysis, step)) for step in study.steps]
    if analysis["pairs"]:
        figures.append(("composition", composition_figure(study, analysis)))
    for name, fig in figures:
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)
    save_atomic({label: {f"{layer}@{step}": maps.mean(layer, step) for (layer, step) in maps.sums}
                 for label, maps in study.maps.items()} | {"tokens": study.tokens}, out / "attention_maps.pt")
    return study.summary(feature_layers)


def _save_image(image, path: Path) -> None:
    from PIL import Image

    array = (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    Image.fromarray(array).save(path)
