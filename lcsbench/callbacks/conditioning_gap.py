"""`ConditioningGap`: does the model use its labels yet? (issue 15's early signal)

A conditional denoiser that ignores its conditioner denoises as well with another image's labels as with its own.
Every `every_n_steps` optimizer steps (rank 0, EMA weights, eval mode: callbacks/base.py), this callback measures
the EDM-weighted denoising error (diffusion/loss.py `denoising_error`, 1.0 = no better than `c_skip x`) of a fixed
set of held-out images at fixed noise levels and fixed noise, once with their true conditioners and once with the
conditioners rolled by one image within the set (every image gets another image's labels), and logs

    cond_gap/true@<sigma>, cond_gap/shuffled@<sigma>    the two errors
    cond_gap/gap@<sigma>                                 shuffled / true - 1 (0: labels unused)

Placement by a location conditioner shows first at middle noise (sigma ~ 1-5, where the layout is decided), and
it emerges late and suddenly on small runs: watch the gap open before judging length generalization.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from lcsbench.callbacks.base import EveryNSteps
from lcsbench.diffusion.loss import denoising_error


def rolled(cond: torch.Tensor) -> torch.Tensor:
    """The conditioners moved on by one image: image i gets image i+1's (a derangement for two or more images)."""
    return torch.roll(cond, shifts=1, dims=0)


@torch.no_grad()
def conditioning_gap(
    denoiser,  # denoiser(x, sigma, cond) -> D(x) (diffusion/denoiser.py)
    images: torch.Tensor,  # [B, C, H, W] held-out images in [-1, 1], B >= 2
    cond: torch.Tensor,  # their conditioners
    sigmas: Sequence[float],  # noise levels
    seed: int = 0,  # seed of the one noise draw shared by both conditionings
    sigma_data: float = 0.5,
) -> dict[float, dict[str, float]]:
    """Per sigma: mean denoising error with the true and with rolled conditioners, and `gap` = shuffled/true - 1."""
    if images.shape[0] < 2:
        raise ValueError(f"the conditioning gap compares an image's labels with another image's: need >= 2 images, "
                         f"got {images.shape[0]}")
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(images)
    result = {}
    for sigma in sigmas:
        noisy = images + sigma * noise
        true = denoising_error(denoiser(noisy, sigma, cond), images, sigma, sigma_data).mean().item()
        shuffled = denoising_error(denoiser(noisy, sigma, rolled(cond)), images, sigma, sigma_data).mean().item()
        result[float(sigma)] = {"true": true, "shuffled": shuffled, "gap": shuffled / max(true, 1e-12) - 1.0}
    return result


class ConditioningGap(EveryNSteps):
    """Logs the denoising error with true vs rolled conditioners every N steps (module docstring)."""

    def __init__(
        self,
        every_n_steps: int = 500,  # optimizer steps between measurements
        sigmas: Sequence[float] = (0.5, 2.0, 5.0),  # noise levels
        num_images: int = 64,  # held-out images measured (the first of the validation set)
        seed: int = 0,  # noise seed (the same noise every time, so the curve compares over training)
    ) -> None:
        super().__init__(every_n_steps)
        if num_images < 2 or not sigmas or any(not (float(s) > 0) for s in sigmas):
            raise ValueError(f"need num_images >= 2 and positive sigmas; got {num_images}, {list(sigmas)}")
        self.sigmas, self.num_images, self.seed = [float(s) for s in sigmas], num_images, seed
        self._held_out: tuple[torch.Tensor, torch.Tensor] | None = None
        self.history: dict[int, dict[float, dict[str, float]]] = {}

    def held_out(self, trainer: L.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `num_images` validation images and conditioners, read once."""
        if self._held_out is None:
            data = getattr(trainer, "datamodule", None)
            if data is None:
                raise ValueError("ConditioningGap measures held-out images: train with a DataModule that has a "
                                 "val_dataloader (CLEVRDataModule)")
            images, conds = [], []
            for batch in data.val_dataloader():
                images.append(batch["image"])
                conds.append(batch["cond"])
                if sum(len(x) for x in images) >= self.num_images:
                    break
            self._held_out = (torch.cat(images)[: self.num_images], torch.cat(conds)[: self.num_images])
        return self._held_out

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, writer) -> None:
        images, cond = self.held_out(trainer)
        device = pl_module.device
        gaps = conditioning_gap(pl_module.denoiser, images.to(device), cond.to(device), self.sigmas, self.seed,
                                getattr(pl_module.denoiser.network, "sigma_data", 0.5))
        self.history[trainer.global_step] = gaps
        for sigma, values in gaps.items():
            for name, value in values.items():
                writer.add_scalar(f"cond_gap/{name}@{sigma:g}", value, trainer.global_step)
