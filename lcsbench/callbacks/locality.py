"""LocalityHeatmaps: the pixel and conditional locality analyses logged during training (paper Figures 2, 10).

Runs every `every_n_steps` optimizer steps on rank 0 with the EMA weights in eval mode (callbacks/base.py) and logs
figures and scalars straight to the TensorBoard writer: images `locality/grid_t{i}` (Figure 2, target pixel i) and
`locality/radius` (Figure 10), scalars `locality/pixel_radius90@sigma=S` and `locality/conditional_radius90@sigma=S`
(the 90% energy radius in pixels, Appendix F; the number is the `fraction` in percent), and the text card
`locality/about`. The scene is the first image of the current training batch
(`batch["image"]`, `batch["cond"]`), so the callback needs no sampler and no data of its own.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lcsbench.analysis.closed_form.posterior import budget_from_gib
from lcsbench.analysis.locality import locality_profile, locality_targets
from lcsbench.analysis.plots import locality_grid, radius_curves
from lcsbench.callbacks.base import EveryNSteps


class LocalityHeatmaps(EveryNSteps):
    """Logs Figure-2 grids (pixel and conditional heat maps over noise levels) and Figure-10 radius curves, plus
    the pixel and conditional locality radii per noise level as scalars (module docstring)."""

    ABOUT = ("How far the denoiser looks: for a target pixel, the heat maps show how strongly each input pixel "
             "(Eq. 9) and each conditioned grid cell (Eq. 10) moves it at each noise level, with the radius of the "
             "square holding 90% of that influence (paper Figure 2; radii over noise: Figure 10).")
    CARD_TAG = "locality/about"

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
        self.memory_budget = budget_from_gib(memory_budget_gib, "LocalityHeatmaps' memory_budget_gib", 1.0,
                                             "one batched backward")

    @torch.enable_grad()  # Eq. 9 and 10 are Jacobians: backward passes through the denoiser
    def analyse(self, trainer, pl_module, batch: dict, writer) -> None:
        image, cond = batch["image"][:1], batch["cond"][:1]
        images = image.repeat(self.samples, 1, 1, 1)
        conds = cond.repeat(self.samples, *([1] * (cond.ndim - 1)))
        active = bool((cond != 0).any())
        # kind, grid and size as the denoiser states them (not guessed from the batch's shapes)
        targets, centres = locality_targets(pl_module.denoiser, cond[0], self.max_targets)
        profile = locality_profile(pl_module.denoiser, images, conds, self.sigmas, targets,
                                   conditioner_centres=centres, fraction=self.fraction,
                                   memory_budget=self.memory_budget, conditional=active)
        step = trainer.global_step
        for t in range(len(profile.pixels)):
            title = f"Figure 2 at step {step}: locality of D at target pixel {tuple(profile.pixels[t])}"
            writer.add_figure(f"locality/grid_t{t}", locality_grid(profile, target=t, title=title), step, close=True)
        writer.add_figure("locality/radius", radius_curves(profile, title=f"Figure 10 at step {step}: "
                                                                            f"locality radius vs noise level"),
                          step, close=True)
        for tag, value in self.radii(profile).items():
            writer.add_scalar(tag, value, step)

    def radii(self, profile) -> dict[str, float]:
        """Scalar tag -> the radius (pixels) of the square holding `fraction` of the influence, averaged over the
        targets (pixel locality) or the conditioned cells (conditional locality), per noise level."""
        percent = f"{100 * self.fraction:g}"
        values = {}
        for s, sigma in enumerate(profile.sigmas):
            values[f"locality/pixel_radius{percent}@sigma={sigma:g}"] = float(profile.pixel_radius[s].nanmean())
            if profile.conditional_radius is not None:
                value = float(profile.conditional_radius[s].nanmean())
                if value == value:  # NaN when no cell was conditioned
                    values[f"locality/conditional_radius{percent}@sigma={sigma:g}"] = value
        return values

    def settings(self) -> dict[str, object]:
        return {"noise levels": self.sigmas, "noise draws": self.samples, "target pixels": self.max_targets,
                "scene": "the first image of the training batch"}
