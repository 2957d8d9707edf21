"""Sample grids during training, logged to TensorBoard (IMAGES tab, tag `samples/ema`).

Every `every_n_steps` optimizer steps, on global rank 0 only, the EMA network (when a PowerFunctionEMA callback
is present; the raw weights otherwise) samples one image per conditioner with the EDM Heun sampler and fixed
noise. The conditioners are those of the first training batch the callback sees, kept for the whole run, so
successive grids are comparable; the real images they came from are logged once under `samples/real`. Nothing
in the rank-0 branch communicates across ranks, so the other ranks carry on to the next step.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lcsbench.diffusion.sampler import edm_sampler


def image_grid(images: torch.Tensor, columns: int | None = None, padding: int = 1) -> torch.Tensor:
    """Tile `[N, C, H, W]` images in [-1, 1] into one `uint8 [H', W', C]` image (white gaps)."""
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    pixels = ((images.detach().float().cpu() * 127.5 + 128).clamp(0, 255)).to(torch.uint8)
    grid = torch.full((c, rows * (h + padding) + padding, columns * (w + padding) + padding), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = pixels[i]
    return grid.permute(1, 2, 0).contiguous()


def tensorboard_writer(trainer: L.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class SampleGrid(L.Callback):
    """Logs EMA samples for a fixed set of training conditioners every `every_n_steps` steps."""

    def __init__(
        self,
        every_n_steps: int = 5000,  # optimizer steps between grids
        num_samples: int = 16,  # images per grid (taken from the first batch; fewer if it is smaller)
        num_steps: int = 32,  # EDM Heun steps (2 * num_steps - 1 network evaluations)
        seed: int = 0,  # seed of the fixed sampling noise
    ):
        super().__init__()
        if every_n_steps < 1 or num_samples < 1 or num_steps < 2:
            raise ValueError(f"SampleGrid needs every_n_steps >= 1, num_samples >= 1, num_steps >= 2; got "
                             f"{every_n_steps}, {num_samples}, {num_steps}")
        self.every_n_steps, self.num_samples, self.num_steps, self.seed = every_n_steps, num_samples, num_steps, seed
        self.cond: torch.Tensor | None = None
        self._last_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: dict,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.cond is None and trainer.is_global_zero:
            self.cond = batch["cond"][: self.num_samples].detach().cpu()
            writer = tensorboard_writer(trainer)
            if writer is not None:
                writer.add_image("samples/real", image_grid(batch["image"][: self.num_samples]), step,
                                 dataformats="HWC")
        if step == 0 or step % self.every_n_steps or step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        samples = self.sample(trainer, pl_module, batch["image"].shape[1:])
        writer.add_image("samples/ema", image_grid(samples), step, dataformats="HWC")

    @torch.no_grad()
    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule, image_shape: torch.Size) -> torch.Tensor:
        cond = self.cond.to(pl_module.device)
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((cond.shape[0], *image_shape), generator=generator).to(pl_module.device)
        swap = next((cb.average_weights for cb in trainer.callbacks if callable(getattr(cb, "average_weights", None))),
                    None)
        was_training = pl_module.training
        pl_module.eval()
        try:
            if swap is None:
                return edm_sampler(pl_module.denoiser, noise, cond, num_steps=self.num_steps)
            with swap(pl_module):
                return edm_sampler(pl_module.denoiser, noise, cond, num_steps=self.num_steps)
        finally:
            pl_module.train(was_training)
