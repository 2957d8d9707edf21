"""Helpers shared by the commands: the checkpoint options of the analysis commands, the device default, and
comma-separated number lists. Nothing here computes; the commands call the layers below for that."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_SIGMAS = "0.05,0.2,0.5,1,2,5,10,40"  # the locality noise grid (Figure 2's rows and more)


def default_device() -> str:
    """`cuda` when a GPU is visible, else `cpu` (every command's --device default)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class AnalysisModel:
    """What the analysis commands need from a checkpoint."""

    denoiser: object          # denoiser(x, sigma, cond) -> D
    network: nn.Module        # the module holding the EDM2 blocks (hooks go here)
    kind: str                 # conditioning kind: "location" or "color"
    resolution: int           # image height = width
    channels: int             # image channels
    grid_size: int            # location grid G (unused for colour)


def load_analysis_model(ckpt: str, ema: bool, device: str) -> AnalysisModel:
    """Load a trained diffusion checkpoint (EMA weights unless ema=False) in eval mode on `device`."""
    path = Path(ckpt)
    if not path.is_file():
        raise SystemExit(f"checkpoint {ckpt} does not exist: pass the .ckpt written by `python -m lcsbench fit` "
                         f"(runs/<experiment>/.../checkpoints/last.ckpt)")
    from lcsbench.models.edm2 import load_denoiser

    module = load_denoiser(str(path), ema=ema, map_location=device)
    module = module.to(device).eval()
    net = module.net
    return AnalysisModel(denoiser=module.denoiser, network=net, kind=module.conditioning,
                         resolution=net.img_resolution, channels=net.img_channels,
                         grid_size=getattr(module, "grid_size", 16))


def add_model_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    """The checkpoint, output and weight options every analysis command shares."""
    parser.add_argument("--ckpt", required=True, help="trained checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ema", action="store_true", help="use the raw training weights, not the EMA")
    parser.add_argument("--device", default=default_device())


def parse_floats(text: str, what: str) -> list[float]:
    """A comma list of positive numbers for option --`what`, or a SystemExit that says what was expected."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--{what} takes comma-separated numbers such as {DEFAULT_SIGMAS}; found {text!r}")
    if not values or any(v <= 0 for v in values):
        raise SystemExit(f"--{what} needs positive numbers; found {text!r}")
    return values
