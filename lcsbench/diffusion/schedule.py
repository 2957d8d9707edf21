"""EDM2 learning-rate schedule (Karras et al. 2024, Sec. 2.3, Eq. 67): linear warm-up, then 1/sqrt decay.

`lr(t) = ref_lr / sqrt(max(t / t_ref, 1)) * min(nimg / rampup_images, 1)`, evaluated before the step's
images are counted, so the very first step has lr = 0 (the Adam moments still update).
"""

from __future__ import annotations

import math


def learning_rate(
    step: int,  # optimizer steps taken so far (0 for the first step)
    batch_size: int,  # global batch size (all ranks, all accumulation rounds)
    ref_lr: float = 0.012,  # alpha_ref (img64-xs: 0.0120)
    ref_batches: float = 35000,  # t_ref: steps before the 1/sqrt decay starts (img64: 35000)
    rampup_images: float = 10e6,  # warm-up length in images (EDM2: 10 M, decimal)
) -> float:
    """Learning rate of optimizer step `step`."""
    lr = ref_lr
    if ref_batches > 0:
        lr /= math.sqrt(max(step / ref_batches, 1))
    if rampup_images > 0:
        lr *= min(step * batch_size / rampup_images, 1)
    return lr
