"""Sample grids during training, logged to TensorBoard (IMAGES tab, tag `samples/ema`).

Every `every_n_steps` optimizer steps, on global rank 0 only (callbacks/base.py decides when), the EMA network
(when a PowerFunctionEMA callback is present; the raw weights otherwise) samples one image per conditioner with
the EDM Heun sampler and fixed noise. The conditioners are those of the first training batch the callback sees,
kept for the whole run, so successive grids are comparable; the real images they came from are logged once under
`samples/real`. Tiles are enlarged to at least 96 px and the conditioned location cells are outlined in lime
(analysis/plots.py), so a grid shows what was asked beside what was drawn. Nothing in the rank-0 branch
communicates across ranks, so the other ranks carry on to the next step.
"""

from __future__ import annotations

import lightning as L
import torch

from lcsbench.analysis.plots import image_grid, outline_cells, upscale
from lcsbench.callbacks.base import EveryNSteps, tensorboard_writer
from lcsbench.diffusion.sampler import PAPER_HEUN_STEPS, edm_sampler


class SampleGrid(EveryNSteps):
    """Logs EMA samples for a fixed set of training conditioners every `every_n_steps` steps."""

    def __init__(
        self,
        every_n_steps: int = 5000,  # optimizer steps between grids
        num_samples: int = 16,  # images per grid (taken from the first batch; fewer if it is smaller)
        num_steps: int = PAPER_HEUN_STEPS,  # EDM Heun steps (2 * num_steps - 1 network evaluations)
        seed: int = 0,  # seed of the fixed sampling noise
    ):
        if every_n_steps < 1 or num_samples < 1 or num_steps < 2:
            raise ValueError(f"SampleGrid needs every_n_steps >= 1, num_samples >= 1, num_steps >= 2; got "
                             f"{every_n_steps}, {num_samples}, {num_steps}")
        super().__init__(every_n_steps)
        self.num_samples, self.num_steps, self.seed = num_samples, num_steps, seed
        self.cond: torch.Tensor | None = None
        self.kind: str | None = None  # the denoiser's conditioning kind, read with the first batch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: dict,
                           batch_idx: int) -> None:
        if self.cond is None and trainer.is_global_zero:  # the fixed conditioners, from the first batch seen
            self.cond = batch["cond"][: self.num_samples].detach().cpu()
            self.kind = pl_module.denoiser.conditioning  # the Denoiser says its kind (docs/architecture.md)
            writer = tensorboard_writer(trainer)
            if writer is not None:
                writer.add_image("samples/real", self.grid(batch["image"][: self.num_samples]),
                                 trainer.global_step, dataformats="HWC")
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @torch.no_grad()
    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, writer) -> None:
        cond = self.cond.to(pl_module.device)
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((cond.shape[0], *batch["image"].shape[1:]), generator=generator).to(pl_module.device)
        samples = edm_sampler(pl_module.denoiser, noise, cond, num_steps=self.num_steps)
        writer.add_image("samples/ema", self.grid(samples), trainer.global_step, dataformats="HWC")

    def grid(self, images: torch.Tensor) -> torch.Tensor:
        """Tiles enlarged to >= 96 px (nearest neighbour), location cells outlined (analysis/plots.py)."""
        images = upscale(images.detach().float().cpu())
        if self.kind == "location":  # cells to outline; colour counts have no place to draw
            images = outline_cells(images, self.cond[: images.shape[0]])
        return image_grid(images)
