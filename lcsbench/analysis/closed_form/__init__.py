"""Training-free closed-form denoisers of a render's training split (issue 23), on the one denoiser interface.

- `training_set`: the joint distribution of (image, label) a model trains on (label modes enumerated).
- `empirical`: the empirical conditional denoiser E[x0 | x, c], the exact optimum of the training loss (it
  memorises), and `nearest_training_distance`, the memorisation measure.
- `local`: the local conditional score machine, a local conditional score by construction (paper Sec. 3,
  Lemma 1), positional (as Exp. 3) or equivariant.
- `yardstick`: r2 of a trained denoiser's D against a closed form's, per noise level.

Pure torch (no Lightning, no files): models/closed_form.py builds them from a render.
"""

from lcsbench.analysis.closed_form.empirical import (EmpiricalDenoiser, EmpiricalResult, empirical_denoise,
                                                     nearest_training_distance)
from lcsbench.analysis.closed_form.local import LocalResult, LocalScoreMachine, equivariant_local_denoise, local_denoise
from lcsbench.analysis.closed_form.training_set import TrainingSet, label_distribution, training_set

__all__ = ["EmpiricalDenoiser", "EmpiricalResult", "LocalResult", "LocalScoreMachine", "TrainingSet",
           "empirical_denoise", "equivariant_local_denoise", "label_distribution", "local_denoise",
           "nearest_training_distance", "training_set"]
