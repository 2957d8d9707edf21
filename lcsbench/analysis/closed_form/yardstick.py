"""A yardstick for trained models: how much of a trained denoiser's output a closed form explains (issue 23, 3).

On held-out images y with conditioners c, one fixed noise draw n, and each noise level sigma, both denoisers see
the same x = y + sigma n. Per sigma, as the closed-form literature reports it (Niedoba et al.; Kamb & Ganguli):

    r2(sigma)  = 1 - sum_{b,p} (D_model - D_ref)^2 / sum_{b,p} (D_model - mean_b D_model)^2
    mse(sigma) = mean_{b,p} (D_model - D_ref)^2

the fraction of the trained model's variance across held-out images (per pixel p) that the closed form's output
explains: 1 = the same function on these inputs, 0 = no better than the model's own mean image, < 0 = worse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor

from lcsbench.diffusion.denoiser import Denoiser


def fixed_noise(images: Tensor, seed: int) -> Tensor:
    """The one noise draw `[B, C, H, W]` every sigma and every denoiser shares."""
    return torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(images.device, images.dtype)


@torch.no_grad()
def denoised_over_sigmas(
    denoiser: Denoiser,                      # denoiser(x, sigma, cond) -> D, in eval mode
    images: Tensor,                          # clean held-out images [B, C, H, W]
    cond: Tensor,                            # their conditioners [B, ...]
    sigmas: Sequence[float],                 # noise levels
    seed: int = 0,                           # the noise draw
    batch: int = 16,                         # images per denoiser call
) -> Tensor:
    """`[S, B, C, H, W]`: D(y + sigma n; sigma, c) for every noise level, in float32 on the CPU."""
    if batch < 1:
        raise ValueError(f"batch is a positive number of images per call; found {batch}")
    noise = fixed_noise(images, seed)
    levels = []
    for sigma in sigmas:
        x = images + float(sigma) * noise
        parts = [denoiser(x[i:i + batch], float(sigma), cond[i:i + batch]).float().cpu()
                 for i in range(0, len(images), batch)]
        levels.append(torch.cat(parts))
    return torch.stack(levels)


def r2_per_sigma(model: Tensor, reference: Tensor) -> Tensor:
    """`[S]` fraction of the model's variance across images that the reference explains (module docstring);
    both `[S, B, ...]`."""
    if model.shape != reference.shape or model.ndim < 3:
        raise ValueError(f"model and reference outputs are [S, B, ...] of one shape; found {tuple(model.shape)} "
                         f"and {tuple(reference.shape)}")
    model, reference = model.double(), reference.double()
    residual = (model - reference).pow(2).flatten(1).sum(dim=1)
    spread = (model - model.mean(dim=1, keepdim=True)).pow(2).flatten(1).sum(dim=1)
    return (1 - residual / spread).float()


def mse_per_sigma(model: Tensor, reference: Tensor) -> Tensor:
    """`[S]` mean squared difference of the two outputs per noise level."""
    return (model.double() - reference.double()).pow(2).flatten(1).mean(dim=1).float()


def r2_report(sigmas: Sequence[float], model: Tensor, references: Mapping[str, Tensor]) -> dict:
    """JSON-ready r2 and mse curves of one model against each named closed form's outputs."""
    return {"sigmas": [float(s) for s in sigmas],
            "r2": {name: r2_per_sigma(model, outputs).tolist() for name, outputs in references.items()},
            "mse": {name: mse_per_sigma(model, outputs).tolist() for name, outputs in references.items()}}


def plot_r2(report: Mapping, title: str = "") -> Figure:
    """The r2 curves of `r2_report` over sigma (log axis), one line per closed form (matplotlib's object API,
    as analysis/plots.py: no pyplot, no backend chosen). The axis shows r2 in [-1, 1]; the JSON holds all."""
    figure = Figure(figsize=(5, 3.4))
    axis = figure.add_subplot()
    for name, values in report["r2"].items():
        axis.plot(report["sigmas"], values, marker="o", label=name)
    axis.set_xscale("log")
    axis.set_xlabel("sigma")
    axis.set_ylabel("r2 of the model's D")
    axis.axhline(0, color="gray", linewidth=0.5)
    axis.set_ylim(-1.05, 1.05)
    axis.legend()
    axis.set_title(title)
    figure.tight_layout()
    return figure
