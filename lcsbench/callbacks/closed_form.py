"""ClosedFormR2: the closed-form yardstick logged during training (issue 23, item 3).

Every `every_n_steps` optimizer steps (rank 0, EMA weights, eval mode: callbacks/base.py) the model denoises a
fixed set of held-out renders at fixed noise levels, and its D is compared with each closed form's on the same
inputs (analysis/closed_form/yardstick.py): `closed_form/r2_<kind>@<sigma>` scalars and a `closed_form/r2` figure.

The closed forms are built once, at the first analysis, from the run's own DataModule (its render, counts, label
mode and grid), and only their outputs on the held-out inputs are kept: they depend on no weight, so one pass of
each serves the whole run and their training images leave memory again.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lcsbench.analysis.closed_form.posterior import budget_from_gib
from lcsbench.analysis.closed_form.yardstick import denoised_over_sigmas, plot_r2, r2_report
from lcsbench.callbacks.base import EveryNSteps
from lcsbench.models.closed_form import KINDS, build_closed_form, heldout_batch


class ClosedFormR2(EveryNSteps):
    """Logs r2 of the model's D against the local machine and the empirical denoiser, per noise level."""

    def __init__(
        self,
        every_n_steps: int = 5000,               # optimizer steps between analyses
        kinds: Sequence[str] = KINDS,            # closed forms to compare with: local, empirical
        sigmas: Sequence[float] = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),  # noise levels
        images: int = 16,                        # held-out renders
        radius: int = 2,                         # local machine: patches of (2r+1)^2 cells
        images_per_count: int | None = None,     # training images per count the closed forms use (None: all)
        seed: int = 0,                           # the noise draw
        memory_budget_gib: float = 0.5,          # memory of one closed-form chunk
    ):
        super().__init__(every_n_steps)
        unknown = [kind for kind in kinds if kind not in KINDS]
        if unknown or not kinds or images < 2:
            raise ValueError(f"ClosedFormR2 needs kinds among {KINDS} and images >= 2; found {list(kinds)}, {images}")
        self.kinds, self.sigmas, self.images = list(kinds), [float(s) for s in sigmas], images
        self.radius, self.images_per_count, self.seed = radius, images_per_count, seed
        self.memory_budget = budget_from_gib(memory_budget_gib, "ClosedFormR2's memory_budget_gib", 0.5)
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.references: dict[str, torch.Tensor] = {}

    def prepare(self, trainer, pl_module) -> None:
        """Held-out inputs and the closed forms' outputs on them, from the run's DataModule (once)."""
        data = trainer.datamodule
        if getattr(data, "conditioning", None) != "location":
            raise ValueError("ClosedFormR2 compares location-conditioned models with closed forms over location "
                             "grids: drop it from this run's callbacks (its data is not location-conditioned)")
        settings = (data.root, data.counts, data.label_mode, data.grid_size)
        images, cond = heldout_batch(*settings, self.images, data.seed)
        for kind in self.kinds:
            closed_form = build_closed_form(kind, *settings, radius=self.radius,
                                            images_per_count=self.images_per_count, memory_budget=self.memory_budget)
            self.references[kind] = denoised_over_sigmas(closed_form.denoiser, images, cond, self.sigmas, self.seed)
            del closed_form
        self.inputs = (images, cond)

    def analyse(self, trainer, pl_module, batch: dict, writer) -> None:
        if self.inputs is None:
            self.prepare(trainer, pl_module)
        images, cond = (t.to(pl_module.device) for t in self.inputs)
        outputs = denoised_over_sigmas(pl_module.denoiser, images, cond, self.sigmas, self.seed)
        report = r2_report(self.sigmas, outputs, self.references)
        step = trainer.global_step
        for kind, values in report["r2"].items():
            for sigma, value in zip(report["sigmas"], values):
                writer.add_scalar(f"closed_form/r2_{kind}@{sigma:g}", value, step)
        writer.add_figure("closed_form/r2", plot_r2(report, title=f"step {step}"), step, close=True)
