"""`PatchLocalDiffusion`: EDM2 training of the patch-local denoiser (the paper's Experiment 3, App. E.3).

Per training image, one "positive" patch (at least one active conditioner in its subgrid) and one
"negative" patch (none) are cut from the image, and the EDM2 loss of each is averaged. Patches are
cut with the border policy of `lcsbench.nn.patch`: pixels outside the image are 0 in the target and
receive no noise, exactly as the full-image denoiser presents them at inference. Everything else
(optimizer, schedule, forced weight norm, EMA, validation at fixed noise levels on full images,
checkpoints) is `EDM2Diffusion`'s, and `denoiser(x, sigma, cond)` is the full-image patch-local
denoiser, so sampling, callbacks and analyses run on it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lcsbench.data.conditioning import DEFAULT_GRID_SIZE
from lcsbench.diffusion.loss import edm2_loss
from lcsbench.models.edm2 import EDM2Diffusion
from lcsbench.nn.patch import PatchLocal, all_patches, gather_cells, patch_label_dim, sample_training_cells


class PatchLocalDiffusion(EDM2Diffusion):
    """Trains `net` (a Precond on (2r+1)m-pixel patches) as a patch-local full-image denoiser."""

    def __init__(
        self,
        net: torch.nn.Module,  # patch denoiser: Precond(img_resolution=(2r+1)m, label_dim=(2r+1)^2+2)
        conditioning: str = "location",  # the only kind: a patch sees its subgrid of location cells (App. E.3)
        grid_size: int = DEFAULT_GRID_SIZE,  # G: cells per side, the location-conditioning grid
        radius: int = 2,  # r: a patch spans (2r+1) x (2r+1) cells
        max_patches: int = 4096,  # memory budget of full-image denoising: patches per network call
        label_scale: str = "counts",  # subgrid counts as they are | unit L2 norm (nn.edm2.scale_label, App. E.1)
        lr: float = 0.012,  # reference learning rate (EDM2 img64-xs)
        lr_decay_steps: float = 35000,  # optimizer steps before the 1/sqrt(t) decay
        lr_rampup_images: float = 10e6,  # linear warm-up length in images
        P_mean: float = -0.8,  # mean of ln(sigma) during training
        P_std: float = 1.6,  # std of ln(sigma)
        val_sigmas: tuple[float, ...] = (0.02, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0),  # validation noise levels
        val_seed: int = 0,  # seed of the validation noise
        noise_seed: int = 0,  # training noise seed
        compile: bool = False,  # torch.compile the patch U-Net for training
        channels_last: bool = False,  # store the patch U-Net's conv weights channels-last (NHWC)
    ):
        if conditioning != "location":
            raise ValueError(f"the patch-local model conditions on location cells (App. E.3), not {conditioning!r}: "
                             f"train it on data.init_args.conditioning: location, or use EDM2Diffusion")
        super().__init__(net, conditioning=conditioning, grid_size=grid_size, label_scale=label_scale, lr=lr,
                         lr_decay_steps=lr_decay_steps, lr_rampup_images=lr_rampup_images, P_mean=P_mean,
                         P_std=P_std, val_sigmas=val_sigmas, val_seed=val_seed, noise_seed=noise_seed,
                         compile=compile, channels_last=channels_last)
        self.local = PatchLocal(net, grid_size=grid_size, radius=radius, max_patches=max_patches,
                                label_scale=label_scale)

    @classmethod
    def network_label_dim(cls, conditioning: str, grid_size: int, init_args: Mapping[str, Any]) -> int:
        """(2r+1)^2 subgrid cells + 2 patch-centre coordinates, whatever the grid (App. E.3)."""
        return patch_label_dim(init_args["radius"])

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # Every training image needs a labelled object (its positive patch, App. E.3): refuse data that can name
        # none now, rather than by a device-side assertion in the middle of training (nn.patch.check_labelled).
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        counts, label_mode = getattr(data, "counts", None), getattr(data, "label_mode", None)
        if stage == "fit" and counts is not None and (0 in counts or (label_mode == "drop_one" and 1 in counts)):
            raise ValueError(f"the patch-local model needs at least one labelled object per training image, but "
                             f"counts {list(counts)} with label_mode {label_mode!r} can label none: train on counts "
                             f">= 1 (>= 2 for drop_one), or with label_mode single, random or all")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the full image, G cells of m pixels (the network sees (2r+1)m-pixel patches)."""
        return (self.net.img_channels, self.local.img_resolution, self.local.img_resolution)

    def resolution_hint(self, resolution: int) -> str:
        cells = resolution // self.local.grid_size
        return (f"{self.local.grid_size} cells of {cells} px: model.init_args.net.init_args.img_resolution: "
                f"{(2 * self.local.radius + 1) * cells}, the (2r+1)m-pixel patch")

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        """D(x; sigma, cond) of the full image; `cond` is the [B, G, G] location grid."""
        return self.local(x, sigma, cond.to(x.device))

    def training_patches(self, batch: dict, generator: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean patches [2B, C, P, P] (positives, then negatives), their in-image masks and labels."""
        images, cond = batch["image"], batch["cond"]
        self.local.check_inputs(images, cond)
        g, r = self.local.grid_size, self.local.radius
        positive, negative, has_negative = sample_training_cells(cond, r, generator)
        if self._trainer is not None:  # share of images that had a patch free of conditioners
            self.log("train/negative_patch_rate", has_negative.float().mean())
        cells = (positive, negative)
        pixels = all_patches(images, g, r)
        inside = all_patches(torch.ones_like(images[:, :1]), g, r)
        labels = self.local.cell_labels(cond)

        def pick(per_cell: torch.Tensor) -> torch.Tensor:
            return torch.cat([gather_cells(per_cell, c) for c in cells])

        return pick(pixels), pick(inside), pick(labels)

    def per_image_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """EDM2 loss of each image's positive and negative patch, averaged per image (App. E.3)."""
        patches, inside, labels = self.training_patches(batch, generator)
        per_patch = edm2_loss(self.net, patches, labels, self.hparams.P_mean, self.hparams.P_std,
                              sigma_data=getattr(self.net, "sigma_data", 0.5), generator=generator,
                              noise_mask=inside)
        return per_patch.reshape(2, -1).mean(dim=0)
