"""FeatureCosine: the feature-space cosine analysis logged during training (paper Figure 5, Eq. 3).

Runs every `every_n_steps` optimizer steps on rank 0 with the EMA weights in eval mode (callbacks/base.py) and
logs the cosine-matrix figure and the off-diagonal scalars (feature space, and per resolution) straight to the
TensorBoard writer. The noisy images are the first ones of the current training batch (real renders, which the
default `modulated` site needs), so the callback needs no data of its own. `python -m lcsbench features` adds
the chance level of a re-initialised copy.

Tags: the image `features/cosines`, the scalars `features/mean_abs_cosine_off_diagonal` (the averaged layers) and
`features/mean_abs_cosine_off_diagonal@<enc|dec>_<H>x<W>` (per resolution), and the text card `features/about`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lcsbench.analysis.features import FEATURE_SITES, feature_cosines, mean_difference_vectors, paper_conditions
from lcsbench.analysis.plots import cosine_matrices
from lcsbench.callbacks.base import EveryNSteps


class FeatureCosine(EveryNSteps):
    """Logs Figure-5-style cosine matrices of the conditioning modulation (Eq. 3) and the mean |cosine| off the
    diagonal (0 = disentangled conditions, 1 = identical) of the averaged layers and per resolution."""

    ABOUT = ("Whether the conditions act on separate feature directions: each matrix holds the cosines between "
             "the mean feature changes that two conditions cause in a layer (Eq. 3; near 0 off the diagonal reads "
             "as disentangled, judged against a re-initialised copy by `lcsbench features`; paper Figure 5).")
    CARD_TAG = "features/about"
    SCALAR = "features/mean_abs_cosine_off_diagonal"

    def __init__(
        self,
        every_n_steps: int = 5000,              # optimizer steps between analyses
        sigmas: Sequence[float] = (0.1, 0.5, 2.0, 10.0),  # noise levels averaged over
        samples: int = 2,                       # noisy images per noise level
        layers: Sequence[str] | None = None,    # block layers (names or globs); None: all
        average: Sequence[str] | None = None,   # layers averaged into the "feature-space" matrix; None: the
                                                # first two encoder resolutions (as the paper labels it)
        max_layers: int = 12,                   # per-layer panels drawn
        site: str = "modulated",                # feature site: modulated | scale (analysis/features.py)
    ):
        super().__init__(every_n_steps)
        self.sigmas = [float(s) for s in sigmas]
        self.samples = samples
        self.layers = None if layers is None else list(layers)
        self.average = None if average is None else list(average)
        self.max_layers = max_layers
        if site not in FEATURE_SITES:
            raise ValueError(f"FeatureCosine: site must be one of {FEATURE_SITES}, got {site!r}")
        self.site = site

    def analyse(self, trainer, pl_module, batch: dict, writer) -> None:
        image, cond = batch["image"], batch["cond"]
        denoiser = pl_module.denoiser  # states its conditioning kind and grid (not guessed from the batch's shapes)
        conditions, labels = paper_conditions(denoiser.conditioning, denoiser.grid_size)
        images = image[:self.samples]
        with torch.no_grad():
            vectors = mean_difference_vectors(denoiser, images, self.sigmas,
                                              conditions.to(device=cond.device, dtype=cond.dtype),
                                              layers=self.layers, site=self.site)
        cosines = feature_cosines(vectors, labels, self.average)
        step = trainer.global_step
        title = f"Figure 5 at step {step}: cosines of the conditions' mean feature changes (Eq. 3, {self.site})"
        writer.add_figure("features/cosines", cosine_matrices(cosines, max_layers=self.max_layers, title=title),
                          step, close=True)
        summary = cosines.summary()
        if summary["average_mean_abs_off_diagonal"] is not None:
            writer.add_scalar(self.SCALAR, summary["average_mean_abs_off_diagonal"], step)
        for group, value in summary["per_resolution_mean_abs_off_diagonal"].items():
            if value is not None:
                writer.add_scalar(f"{self.SCALAR}@{group.replace(' ', '_')}", value, step)

    def settings(self) -> dict[str, object]:
        return {"site": self.site, "noise levels": self.sigmas, "images": self.samples}
