"""Callbacks that log the locality and feature analyses during training (paper Figures 2, 5, 10).

Both run every `every_n_steps` optimizer steps, on global rank 0 only, on the EMA weights when an EMA callback
is present (the weights the paper analyses), with the module in eval mode, and log figures and scalars straight
to the TensorBoard writer. Nothing inside the rank-0 branch communicates across ranks (no `self.log`, no
`sync_dist`, no barrier), so the other ranks simply carry on.

The scene is the first image of the current training batch (`batch["image"]`, `batch["cond"]`), so the callbacks
need no sampler and no data of their own.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lcsbench.analysis.features import feature_cosines, mean_difference_vectors, paper_conditions
from lcsbench.analysis.locality import grid_cell_center, locality_profile
from lcsbench.analysis.plots import cosine_matrices, locality_grid, radius_curves


def tensorboard_writer(trainer: L.Trainer):
    """The SummaryWriter of the first TensorBoard logger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


@contextlib.contextmanager
def ema_weights(trainer: L.Trainer, pl_module: L.LightningModule) -> Iterator[None]:
    """Swap the EMA weights into the module for the duration, if an EMA callback offers them.

    Looks for a callback with a context manager `average_weights(pl_module)` (lcsbench's power-function EMA);
    without one, the current weights are used.
    """
    for callback in trainer.callbacks:
        swap = getattr(callback, "average_weights", None)
        if callable(swap):
            with swap(pl_module):
                yield
            return
    yield


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def conditioning_kind(cond: torch.Tensor) -> str:
    """`location` for a `[B, G, G]` grid, `color` for `[B, 8]` counts (the documented layouts)."""
    return "location" if cond.ndim == 3 else "color"


class _EveryNSteps(L.Callback):
    def __init__(self, every_n_steps: int):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive number of steps; found {every_n_steps}")
        self.every_n_steps = every_n_steps

    def due(self, trainer: L.Trainer) -> bool:
        step = trainer.global_step
        return step > 0 and step % self.every_n_steps == 0 and not trainer.sanity_checking

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: dict, batch_idx: int) -> None:
        if not self.due(trainer) or getattr(self, "_last_step", None) == trainer.global_step:
            return
        self._last_step = trainer.global_step  # once per step, also with gradient accumulation
        if not trainer.is_global_zero:
            return
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        with torch.enable_grad(), ema_weights(trainer, pl_module), eval_mode(pl_module):
            self.analyse(trainer, pl_module, batch, writer)

    def analyse(self, trainer, pl_module, batch: dict, writer) -> None:
        raise NotImplementedError


class LocalityHeatmaps(_EveryNSteps):
    """Logs Figure-2 grids (pixel and conditional heat maps over noise levels) and Figure-10 radius curves, plus
    `locality/pixel_radius@sigma` and `locality/conditional_radius@sigma` scalars."""

    def __init__(
        self,
        every_n_steps: int = 5000,              # optimizer steps between analyses
        sigmas: Sequence[float] = (0.05, 0.5, 2.0, 10.0),  # noise levels (rows of the grid)
        samples: int = 2,                       # noise draws averaged in Eq. 9 and 10
        max_targets: int = 2,                   # target pixels: the first conditioned cells' centres
        fraction: float = 0.9,                  # energy fraction of the locality radius (Appendix F)
        memory_budget_gib: float = 1.0,         # memory of one batched backward
    ):
        super().__init__(every_n_steps)
        self.sigmas = [float(s) for s in sigmas]
        self.samples = samples
        self.max_targets = max_targets
        self.fraction = fraction
        self.memory_budget = int(memory_budget_gib * 2**30)

    def analyse(self, trainer, pl_module, batch: dict, writer) -> None:
        image, cond = batch["image"][:1], batch["cond"][:1]
        res = image.shape[-1]
        images = image.repeat(self.samples, 1, 1, 1)
        conds = cond.repeat(self.samples, *([1] * (cond.ndim - 1)))
        active = bool((cond != 0).any())
        if conditioning_kind(cond) == "location" and active:
            grid = cond.shape[-1]
            cells = cond[0].nonzero().tolist()[:self.max_targets]
            targets = [grid_cell_center(cell, grid, res) for cell in cells]
            centers = lambda cell: grid_cell_center(cell, grid, res)  # noqa: E731
        else:
            targets, centers = [(res // 2, res // 2)], None
        profile = locality_profile(pl_module.denoiser, images, conds, self.sigmas, targets,
                                   conditioner_centers=centers, fraction=self.fraction,
                                   memory_budget=self.memory_budget, conditional=active)
        step = trainer.global_step
        for t in range(len(profile.pixels)):
            writer.add_figure(f"locality/grid_t{t}", locality_grid(profile, target=t), step, close=True)
        writer.add_figure("locality/radius", radius_curves(profile), step, close=True)
        for s, sigma in enumerate(profile.sigmas):
            writer.add_scalar(f"locality/pixel_radius@{sigma:g}", float(profile.pixel_radius[s].nanmean()), step)
            if profile.conditional_radius is not None:
                value = float(profile.conditional_radius[s].nanmean())
                if value == value:
                    writer.add_scalar(f"locality/conditional_radius@{sigma:g}", value, step)


class FeatureCosine(_EveryNSteps):
    """Logs Figure-5-style cosine matrices of the conditioning modulation (Eq. 3) and the mean |cosine| off the
    diagonal of the averaged layers (`features/off_diagonal`: 0 = disentangled)."""

    def __init__(
        self,
        every_n_steps: int = 5000,              # optimizer steps between analyses
        sigmas: Sequence[float] = (0.1, 0.5, 2.0, 10.0),  # noise levels averaged over
        samples: int = 2,                       # noisy images per noise level
        layers: Sequence[str] | None = None,    # modulation layers (names or globs); None: all
        average: Sequence[str] | None = ("*enc.*",),  # layers averaged into the "feature-space" matrix
        max_layers: int = 12,                   # per-layer panels drawn
    ):
        super().__init__(every_n_steps)
        self.sigmas = [float(s) for s in sigmas]
        self.samples = samples
        self.layers = None if layers is None else list(layers)
        self.average = None if average is None else list(average)
        self.max_layers = max_layers

    def analyse(self, trainer, pl_module, batch: dict, writer) -> None:
        image, cond = batch["image"], batch["cond"]
        grid = cond.shape[-1] if cond.ndim == 3 else 16
        conditions, labels = paper_conditions(conditioning_kind(cond), grid)
        images = image[:self.samples]
        with torch.no_grad():
            vectors = mean_difference_vectors(pl_module.denoiser, images, self.sigmas,
                                              conditions.to(device=cond.device, dtype=cond.dtype),
                                              layers=self.layers, network=pl_module)
        cosines = feature_cosines(vectors, labels, self.average)
        step = trainer.global_step
        writer.add_figure("features/cosines", cosine_matrices(cosines, max_layers=self.max_layers), step,
                          close=True)
        summary = cosines.summary()
        if summary["average_mean_abs_off_diagonal"] is not None:
            writer.add_scalar("features/off_diagonal", summary["average_mean_abs_off_diagonal"], step)
